"""The X/Y/Z plot through the API with the WebUI's positional script_args (tiny fixture model)."""

from __future__ import annotations

import base64
import io

from PIL import Image

from core.generation.infotext import read_png_infotext


def _image(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def test_scripts_are_listed(model_api):
    client, _engine = model_api
    assert client.get("/sdapi/v1/scripts").json() == {"txt2img": ["x/y/z plot"], "img2img": ["x/y/z plot"]}
    info = client.get("/sdapi/v1/script-info").json()
    assert info[0]["name"] == "x/y/z plot" and info[0]["args"][0]["choices"][41] == "Size"


def test_a_2x2_grid_with_the_webuis_script_args(model_api):
    client, engine = model_api
    # x: Steps (index 4) "1-2"; y: CFG Scale by name; v1.10.1's 18 arguments, sub-images included.
    args = [4, "1-2", [], "CFG Scale", "3, 7", [], 0, "", [], True, True, False, False,
            False, False, False, 0, False]
    body = {"prompt": "a red circle", "steps": 1, "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler",
            "script_name": "X/Y/Z plot", "script_args": args}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    images = [_image(text) for text in r.json()["images"]]
    assert len(images) == 5  # the grid, then the 4 cells
    grid = images[0]
    assert grid.width > 2 * 64 and grid.height > 2 * 64  # the legend adds room
    info = read_png_infotext(grid)
    assert "Script: X/Y/Z plot" in info and "X Type: Steps" in info and 'Y Values: "3, 7"' in info
    cells = [read_png_infotext(im) for im in images[1:]]
    assert ["Steps: 1" in c for c in cells] == [True, False, True, False]
    assert ["CFG scale: 3" in c for c in cells] == [True, True, False, False]
    assert all("Seed: 11" in c for c in cells)
    saved = list((engine.paths.resolve_output("outputs/txt2img-grids")).rglob("xyz_grid-*-11.png"))
    assert len(saved) == 1


def test_bad_script_args_are_refused_before_anything_runs(model_api):
    client, engine = model_api
    body = {"prompt": "a red circle", "steps": 1, "width": 64, "height": 64, "script_name": "x/y/z plot",
            "script_args": ["Prompt S/R", "square, triangle"]}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 422 and "did not find 'square'" in r.json()["detail"]
    body["script_args"] = [4, "1-20", [], 6, "1-10", []]
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 422 and "200 cells" in r.json()["detail"] and "xyz_max_cells" in r.json()["detail"]
