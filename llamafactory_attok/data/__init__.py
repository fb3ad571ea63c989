"""Data builders: medical classification / VQA sources into LLaMA-Factory sharegpt JSON with attribute tokens."""
