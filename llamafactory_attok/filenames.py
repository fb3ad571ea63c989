"""The names of the files AttTok writes into a run, checkpoint or export folder (one place for all of them)."""

CONFIG_FILE_NAME = "attok_config.json"  # the run's AttTok arguments, template, family, global step
VOCAB_FILE_NAME = "attok_vocab.yaml"  # the attribute vocabulary, in id order
STATE_FILE_NAME = "attok_state.safetensors"  # books, ACC, θ, prototypes (Eq. 5-9)
ATTOK_FILES = (CONFIG_FILE_NAME, VOCAB_FILE_NAME, STATE_FILE_NAME)
