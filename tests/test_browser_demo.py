"""The browser demo in headless Chromium: it segments the toy model's scene as onnxruntime does in Python.

Needs Debian's `chromium` and `chromium-driver`, and the demo built (`npm ci && npm run build` in `demo/`); `.ci/run`
installs both. `STABLE_SAM_DEMO_SCREENSHOT=<file.png>` keeps the page's screenshot (the one in docs/ comes from here).
"""

import base64
import functools
import http.server
import io
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from stable_sam_hf import StableSamModel
from stable_sam_hf.inference import default_image_processor
from stable_sam_hf.onnx import export_onnx


ort = pytest.importorskip("onnxruntime", reason="the `onnx` extra (onnxruntime) is not installed")
webdriver = pytest.importorskip("selenium.webdriver", reason="the `onnx` extra (selenium) is not installed")

from stable_sam_toy.synthetic import generate_scene  # noqa: E402

from tiny import perturb_plugins_  # noqa: E402


ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo"
TOY_MODEL = ROOT / "models" / "toy-sam-128"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SCENE_INDEX = 3
MIN_IOU = 0.99
TIMEOUT = 120

# CI installs Chromium and builds the demo, so there a missing piece fails the test instead of skipping it
IN_CI = os.environ.get("CI") == "true"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        (CHROMIUM is None or CHROMEDRIVER is None) and not IN_CI,
        reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)",
    ),
    pytest.mark.skipif(
        not (DEMO / "vendor" / "ort.wasm.min.mjs").is_file() and not IN_CI,
        reason="the demo is not built: run `npm ci && npm run build` in demo/ (.ci/run does)",
    ),
]


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves demo/ at / and the test's files at /data/."""

    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".js": "text/javascript",
        ".wasm": "application/wasm",
        ".onnx": "application/octet-stream",
    }
    data_dir: Path

    def translate_path(self, path):
        if path.startswith("/data/"):
            return str(self.data_dir / path[len("/data/") :].split("?")[0])
        return super().translate_path(path)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    data = tmp_path_factory.mktemp("demo_data")
    model = perturb_plugins_(StableSamModel.from_pretrained(TOY_MODEL).eval(), seed=0, std=0.1)
    export_onnx(model, data / "model")
    image, masks = generate_scene(SCENE_INDEX, size=128)
    PIL.Image.fromarray(image).save(data / "scene.png")
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    np.save(data / "small_embedding.npy", np.zeros((1, 256, 8, 8), np.float32))
    handler = type("Handler", (_Handler,), {"data_dir": data})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(DEMO)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {
        "url": f"http://127.0.0.1:{server.server_port}/",
        "data": data,
        "model": model,
        "image": image,
        "masks": masks,
    }
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def _wait(browser, condition: str, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(browser, TIMEOUT, poll_frequency=0.2).until(lambda driver: driver.execute_script(condition))
    except Exception:
        error = browser.execute_script("return window.demoState && window.demoState.error")
        raise AssertionError(f"the page did not get to {what}; its error: {error}") from None


def _open(browser, site, query: str):
    browser.get(site["url"] + "index.html?" + query)
    _wait(browser, "return window.demoState && (window.demoState.ready || window.demoState.error)", "ready")


def _page_mask(browser) -> np.ndarray:
    data_url = browser.execute_script("return document.getElementById('mask-canvas').toDataURL('image/png')")
    png = base64.b64decode(data_url.split(",", 1)[1])
    return np.asarray(PIL.Image.open(io.BytesIO(png)).convert("RGBA"))[..., 3] > 0


def _reference_mask(site, decoder: str, prompt: dict) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime in Python on the page's prompt: the mask and the routing weights."""
    model_dir = site["data"] / "model"
    pixel_values = default_image_processor(site["model"])(images=site["image"], return_tensors="np")["pixel_values"]
    encoder = ort.InferenceSession(str(model_dir / "encoder.onnx"), providers=["CPUExecutionProvider"])
    (embeddings,) = encoder.run(None, {"pixel_values": pixel_values.astype(np.float32)})
    session = ort.InferenceSession(str(model_dir / decoder), providers=["CPUExecutionProvider"])
    masks, _, _, routing = session.run(
        None,
        {
            "image_embeddings": embeddings,
            "point_coords": np.asarray(prompt["coords"], np.float32)[None],
            "point_labels": np.asarray(prompt["labels"], np.float32)[None],
            "mask_input": np.zeros((1, 1, 64, 64), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array([128, 128], np.float32),
        },
    )
    return masks[0, 0] > 0, routing[0]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _offset(browser, x: float, y: float) -> tuple[int, int]:
    """Selenium's offset from the prompt canvas's centre for image pixel (x, y)."""
    width = browser.execute_script("return document.getElementById('prompt-canvas').getBoundingClientRect().width")
    scale = width / 128
    return round((x + 0.5) * scale - width / 2), round((y + 0.5) * scale - width / 2)


def _decoded(browser, count: int):
    _wait(browser, f"return window.demoState.decodeCount >= {count} && !window.demoState.busy", f"decode #{count}")
    return browser.execute_script("return window.demoState")


def test_click_box_and_sam_switch_match_onnxruntime(browser, site, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    _open(browser, site, "model=/data/model/&image=/data/scene.png")
    assert browser.execute_script("return window.demoState.error") is None
    canvas = browser.find_element("id", "prompt-canvas")
    ys, xs = np.nonzero(site["masks"][0])
    target = (float(np.median(xs)), float(np.median(ys)))

    # One positive click on the first object
    ActionChains(browser).move_to_element_with_offset(canvas, *_offset(browser, *target)).click().perform()
    page = _decoded(browser, 1)
    assert page["lastPrompt"]["labels"] == [1, -1]
    assert np.abs(np.asarray(page["lastPrompt"]["coords"][0]) - target).max() <= 1.0
    expected, routing = _reference_mask(site, "decoder.onnx", page["lastPrompt"])
    assert expected.any()
    assert _iou(_page_mask(browser), expected) >= MIN_IOU
    assert page["lastOutput"]["alpha1"] == pytest.approx(routing[0], abs=1e-4) and routing[0] > 0.01

    # A dragged box around the object replaces nothing but adds the box corners
    x0, y0, x1, y1 = xs.min() - 3, ys.min() - 3, xs.max() + 3, ys.max() + 3
    (
        ActionChains(browser)
        .move_to_element_with_offset(canvas, *_offset(browser, x0, y0))
        .click_and_hold()
        .move_to_element_with_offset(canvas, *_offset(browser, (x0 + x1) / 2, (y0 + y1) / 2))
        .move_to_element_with_offset(canvas, *_offset(browser, x1, y1))
        .release()
        .perform()
    )
    page = _decoded(browser, 2)
    assert page["lastPrompt"]["labels"] == [1, 2, 3]
    np.testing.assert_allclose(page["lastPrompt"]["coords"][1:], [[x0, y0], [x1, y1]], atol=1.0)
    expected, _ = _reference_mask(site, "decoder.onnx", page["lastPrompt"])
    stable_mask = _page_mask(browser)
    assert _iou(stable_mask, expected) >= MIN_IOU
    screenshot = Path(os.environ.get("STABLE_SAM_DEMO_SCREENSHOT", tmp_path / "demo.png"))
    assert browser.save_screenshot(str(screenshot))

    # The SAM switch: same prompt, SAM's decoder, alpha_1 shown as 0
    browser.find_element("css selector", 'input[name="decoder"][value="sam"]').click()
    page = _decoded(browser, 3)
    assert page["lastPrompt"]["decoder"] == "sam"
    assert page["lastOutput"]["alpha1"] == 0.0
    assert browser.find_element("id", "alpha1").text == "0.000"
    expected, routing = _reference_mask(site, "decoder_sam.onnx", page["lastPrompt"])
    np.testing.assert_array_equal(routing, [0.0, 1.0])
    assert _iou(_page_mask(browser), expected) >= MIN_IOU


@pytest.mark.parametrize(
    "query, message",
    [
        (
            "model=/data/missing/&image=/data/scene.png",
            r"Cannot load the model description \(/data/missing/model.json\): HTTP 404",
        ),
        ("model=/data/model/&image=/data/broken.png", r"Cannot decode the image /data/broken.png"),
        (
            "model=/data/model/&image=/data/scene.png&embedding=/data/small_embedding.npy",
            r"has shape \[1, 256, 8, 8\], but model.json expects \[1, 256, 16, 16\]",
        ),
    ],
    ids=["missing_model_file", "undecodable_image", "embedding_size_mismatch"],
)
def test_bad_input_shows_a_readable_message(browser, site, query, message):
    import re

    _open(browser, site, query)
    error = browser.find_element("id", "error")
    assert error.is_displayed()
    assert re.search(message, error.text), error.text
    assert not browser.execute_script("return window.demoState.ready")
