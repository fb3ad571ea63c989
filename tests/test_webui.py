"""LlamaBoard (LLaMA-Factory's WebUI) trains an AttTok model from the AttTok panel and chats with an AttTok adapter
in the Chat tab, driven in headless Debian Chromium by Playwright. (AttTok keys given through the Train tab's
"Extra arguments" JSON reach the spawned run too: test_integration.py's test_webui_spawned_training_keeps_attok_keys
and test_webui_panel.py, in process.)

Chromium comes from Debian (`apt-get install chromium`, done by .ci/run); Playwright never downloads a browser.
Without /usr/bin/chromium the test is skipped, unless ATTOK_REQUIRE_BROWSER=1 (CI) makes that a failure.
The screenshot is kept in .artifacts/webui_attok.png."""

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO, VENV_BIN, cli_env, trainer_log

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
ARTIFACTS = REPO / ".artifacts"


def _require_browser() -> None:
    if not Path(CHROMIUM).exists():
        if os.environ.get("ATTOK_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium); CI installs it")
    pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def webui(tmp_path_factory):
    """One LlamaBoard server for the module's tests (each opens its own page and writes its own output folder)."""
    tmp_path = tmp_path_factory.mktemp("webui")
    port = _free_port()
    env = cli_env(GRADIO_ANALYTICS_ENABLED="False", GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port))
    # started as a user who never activated the venv: `.venv/bin/llamafactory-cli webui` with the venv off PATH
    # (LF spawns `llamafactory-cli train` by name; the plugin then points it at this environment's)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p and Path(p).resolve() != VENV_BIN)
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "webui_server.log", "w")  # noqa: SIM115 - open for the server's lifetime
    server = subprocess.Popen([str(VENV_BIN / "llamafactory-cli"), "webui"], cwd=tmp_path, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(1)
    try:
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _choose(page, label: str, value: str, attempts: int = 8) -> None:
    """Pick ``value`` in a dropdown as a user does: open it, click the option; a free value (a path) is typed and
    entered. The Train tab's widget is the visible one (the Evaluate tab has hidden twins). Opening a LlamaBoard
    dropdown fires its focus event (e.g. the Dataset list is reloaded), which re-renders the widget: wait for that
    before typing or clicking, and start over if the widget was swapped under us."""
    for attempt in range(attempts):
        box = page.get_by_label(label, exact=True).filter(visible=True).first
        try:
            box.click(timeout=5_000)
            page.wait_for_timeout(800)  # the focus event's re-render
            option = page.get_by_role("option", name=value, exact=True).filter(visible=True)
            if option.count():
                option.first.click(timeout=5_000)
            else:
                box = page.get_by_label(label, exact=True).filter(visible=True).first
                box.fill(value, timeout=5_000)
                page.keyboard.press("Enter")
            break
        except Exception:  # noqa: BLE001 - re-rendered while an event ran; the last attempt re-raises below
            if attempt == attempts - 1:
                raise
            page.keyboard.press("Escape")
            page.wait_for_timeout(1_000)
    page.wait_for_timeout(300)


def _set_data_dir(page, folder: str) -> None:
    """Type the folder (its change event reloads the Dataset list); retype if the list does not come back."""
    box = page.get_by_role("textbox", name="Data dir")
    dataset = page.get_by_label("Dataset", exact=True).filter(visible=True)
    for _ in range(3):
        box.fill(folder)
        box.blur()
        try:
            dataset.first.wait_for(state="visible", timeout=20_000)
            return
        except Exception:  # noqa: BLE001 - Gradio still re-rendering; type the folder again
            page.wait_for_timeout(1000)
    raise AssertionError("LlamaBoard never showed the Dataset list for " + folder)


def _fill_train_tab(page, webui, tiny_models, sample_data, out, extra) -> None:
    page.goto(webui, timeout=60_000)
    page.wait_for_selector("text=Model path", timeout=60_000)
    _choose(page, "Model name", "tiny-qwen2-vl")
    page.get_by_role("textbox", name="Model path").fill(str(tiny_models["qwen2_vl"]))
    _choose(page, "Chat template", "qwen2_vl")
    _set_data_dir(page, str(sample_data))
    _choose(page, "Dataset", "retina_attok_train")
    _choose(page, "Output dir", str(out))
    page.get_by_text("Extra configurations").click()
    page.get_by_role("textbox", name="Extra arguments").fill(json.dumps(extra))


def _filled_page(browser, name: str, fill, attempts: int = 4):
    """A page filled by ``fill``; Gradio sometimes keeps a re-rendered dropdown hidden: start over in a new page."""
    for attempt in range(attempts):
        page = browser.new_page(viewport={"width": 1400, "height": 2600})
        try:
            fill(page)
            return page
        except Exception:  # noqa: BLE001 - retried in a fresh page; the last attempt re-raises
            page.screenshot(path=str(ARTIFACTS / f"{name}_attempt{attempt}.png"))
            page.close()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _open_panel(page) -> None:
    page.get_by_text("AttTok configurations").click()
    page.get_by_label("Enable AttTok").check()


def _gamma(page):
    return page.get_by_label("ACC γ").filter(visible=True).first


def test_attok_panel_trains_saves_and_loads_without_json(webui, tiny_models, sample_data, tmp_path):
    """AttTok enabled through the panel only (the Extra-arguments box carries no attok key); a bad value is the
    CLI's error before launch; Save / Load arguments round-trip the panel; the run logs loss_acm; screenshots of the
    panel and of the loss curves are kept in .artifacts/."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    out = tmp_path / "panel_run"
    extra = {"max_steps": 8, "bf16": False, "logging_steps": 1, "save_steps": 1000, "optim": "adamw_torch",
             "report_to": "none", "preprocessing_num_workers": 1, "dataloader_num_workers": 0,
             "per_device_train_batch_size": 4}
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)

        def fill(page):
            _fill_train_tab(page, webui, tiny_models, sample_data, out, extra)
            _open_panel(page)
            _choose(page, "Attribute vocabulary", str(sample_data / "retina_vocab.yaml"))

        page = _filled_page(browser, "webui_panel", fill)
        page.get_by_label("Prototype EMA μ").fill("1")
        page.get_by_role("button", name="Preview command").click()
        page.get_by_text("attok_ema must be in [0, 1), got 1.0.").first.wait_for(timeout=30_000)
        page.get_by_label("Prototype EMA μ").fill("0.99")
        _gamma(page).fill("0.2")
        _choose(page, "Config path", "attok_panel.yaml")
        page.get_by_role("button", name="Save arguments").click()
        page.wait_for_timeout(500)
        _gamma(page).fill("0.35")
        for _ in range(20):  # load until the saved value is back (the save may still be on its way)
            page.get_by_role("button", name="Load arguments").click()
            page.wait_for_timeout(500)
            if float(_gamma(page).input_value()) == 0.2:
                break
        assert float(_gamma(page).input_value()) == 0.2
        page.get_by_text("AttTok configurations").scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "webui_attok_panel.png"))
        page.get_by_role("button", name="Start").click()
        deadline = time.time() + 300
        while time.time() < deadline and not (out / "attok_state.safetensors").exists():
            page.wait_for_timeout(500)
            if (out / "trainer_log.jsonl").exists() and len(trainer_log(out)) >= 6:
                page.screenshot(path=str(ARTIFACTS / "webui_attok_curves.png"))
        browser.close()
    assert (out / "attok_state.safetensors").is_file(), "training launched from the panel did not finish"
    acm = [e["loss_acm"] for e in trainer_log(out) if "loss_acm" in e]
    assert len(acm) == 8 and all(value >= 0 for value in acm)
    saved = json.loads((out / "attok_config.json").read_text())["args"]
    assert saved["attok"] is True and saved["attok_acc_gamma"] == 0.2
    assert saved["attok_vocab"] == str(sample_data / "retina_vocab.yaml")
    written = (out / "training_args.yaml").read_text()
    assert "attok_acc_gamma: 0.2" in written and "attok: true" in written


def _wait_for_box_text(page, text: str, timeout_ms: int) -> None:
    """LlamaBoard writes its status into a read-only textbox: wait until one holds ``text``."""
    page.wait_for_function(
        "text => [...document.querySelectorAll('textarea, input')].some(e => (e.value || '').includes(text))",
        arg=text, timeout=timeout_ms)


def _ask_in_the_chat_tab(page, image: Path, show_tokens: bool) -> str:
    """With model and adapter filled in: load (with or without *Show attribute tokens*), ask one question about
    ``image``, read the answer, unload (LlamaBoard holds one chat model at a time)."""
    box = page.get_by_label("Show attribute tokens").filter(visible=True).first
    box.check() if show_tokens else box.uncheck()
    page.get_by_role("button", name="Load model", exact=True).click()
    try:
        _wait_for_box_text(page, "Model loaded, now you can chat with your model!", 120_000)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "webui_chat_load_failed.png"))
        raise
    page.get_by_label("Temperature").filter(visible=True).first.fill("0.01")
    page.get_by_label("Maximum new tokens").filter(visible=True).first.fill("8")
    page.locator("input[type=file]").first.set_input_files(str(image))
    page.locator("[data-testid='image'] img, .image-frame img").first.wait_for(timeout=30_000)
    page.get_by_placeholder("Input...").fill("Which imaging modality is this?")
    bots = page.locator("[data-testid='bot']")
    before = bots.count()
    page.get_by_role("button", name="Submit", exact=True).click()
    page.wait_for_function(f"() => document.querySelectorAll(\"[data-testid='bot']\").length > {before}",
                           timeout=120_000)
    text, deadline = "", time.time() + 120
    while time.time() < deadline:  # streamed: read until it stops changing (with the tokens shown: until one came)
        page.wait_for_timeout(700)
        now = bots.last.text_content() or ""
        if now == text and (now or not show_tokens):
            break
        text = now
    page.screenshot(path=str(ARTIFACTS / f"webui_chat{'_tokens' if show_tokens else ''}.png"))
    page.get_by_role("button", name="Clear history", exact=True).click()
    page.get_by_role("button", name="Unload model", exact=True).click()
    _wait_for_box_text(page, "Model unloaded.", 60_000)
    return text


def test_chat_tab_loads_an_attok_model_and_answers_about_an_image(webui, tiny_models, modality_adapter, sample_data):
    """The Chat tab (whose load_model is a generator LF streams) loads an AttTok adapter and answers a question
    about an image; with *Show attribute tokens* the answer keeps its <|…|> attribute tokens, without it LF's
    skip_special_tokens drops them (the tiny model's 8 answer tokens are all attribute tokens, so the answer
    shown is then empty: the bot's message is there, without a token). Screenshots in .artifacts/webui_chat*.png."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    image = sorted((sample_data / "modality_images").glob("*.png"))[0]
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2600})
        page.goto(webui, timeout=60_000)
        page.wait_for_selector("text=Model path", timeout=60_000)
        _choose(page, "Model name", "Qwen2-VL-2B-Instruct")  # a vision model name: the Chat tab shows its image box
        page.get_by_role("textbox", name="Model path").fill(str(tiny_models["qwen2_vl"]))
        _choose(page, "Chat template", "qwen2_vl")
        page.get_by_role("tab", name="Chat").click()
        page.get_by_role("textbox", name="Extra arguments").filter(visible=True).first.fill(
            json.dumps({"adapter_name_or_path": str(modality_adapter)}))
        shown = _ask_in_the_chat_tab(page, image, True)
        plain = _ask_in_the_chat_tab(page, image, False)
        browser.close()
    assert "<generator object" not in plain + shown
    assert shown.strip() and "<|" in shown, shown
    assert "<|" not in plain, plain
