"""The Extra networks panel, the LoRA metadata viewer and the "Additional Networks" LoRA picker.

``build_extra_networks(engine, prompt_box)`` makes all three inside the current Blocks and
returns its components. Cards come from ``core.networks.catalog``; a click on a card puts its
text into the prompt at the cursor (a small JS step after the server handler, because only the
browser knows ``selectionStart``); clicking a card whose tag is already in the prompt takes it
out again, as in the WebUI. A card with a preview picture is a portrait picture card; one without
is a compact tile (a row high) that names the file and its type (``gallery_item``, CSS in
ui/common.py). The picker rows become ``<lora:name:weight>`` tags through
``apply_picker`` when the job is built.

Strings: ``STRINGS`` below holds this module's English and Chinese texts; ``i18n_tables()``
hands them to ``ui/i18n.py`` (see the report on how they are merged).
"""

from __future__ import annotations

import html
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
from gradio.i18n import I18nData
from PIL import Image

from core.errors import KilnError
from core.networks.catalog import CHECKPOINT, KINDS, LORA, TAB_TITLES, Card, NetworkCatalog
from ui.i18n import localize_headers

if TYPE_CHECKING:
    from core.engine import Engine

PICKER_ROWS = 5
PICKER_NONE = "None"
TILE_SIZE = (192, 256)  # picture cards are portrait, as the WebUI's
# The image a card without a preview shows. ui/common.py's CSS finds compact tiles by this file
# name in the <img> src, hides the image and shows the caption (type, then name) as the tile.
COMPACT_TILE_FILE = "kiln-card-tile.png"
SORT_CHOICES = (("Name", "name"), ("Date modified", "date_modified"), ("Path", "path"))
ASCENDING, DESCENDING = "Ascending", "Descending"

STRINGS: dict[str, dict[str, str]] = {
    "en": {},
    "zh-CN": {
        "Extra networks": "额外网络",
        "Checkpoints": "模型",
        "Lora": "Lora",
        "Textual Inversion": "嵌入式 (T.I. Embedding)",
        "Hypernetworks": "超网络 (Hypernetworks)",
        "Search": "搜索",
        "Sort by": "排序方式",
        "Name": "名称",
        "Date modified": "修改日期",
        "Path": "路径",
        "Ascending": "升序",
        "Descending": "降序",
        "Refresh": "刷新",
        "LoRA metadata": "LoRA 元数据",
        "Click a LoRA card to see its training metadata.": "点击 LoRA 卡片查看其训练元数据。",
        "Summary": "概要",
        "Tag frequency": "标签频率",
        "Dataset folders": "数据集文件夹",
        "Raw metadata": "原始元数据",
        "Field": "字段",
        "Value": "值",
        "Folder": "文件夹",
        "Tag": "标签",
        "Count": "次数",
        "Repeats": "重复次数",
        "Images": "图片数",
        "Images × repeats": "图片数 × 重复次数",
        "Kind": "类型",
        "User notes": "用户备注",
        "Description": "描述",
        "Activation text": "触发词",
        "Will be added to prompt along with Lora": "将与 Lora 一起加入提示词",
        "Preferred weight": "首选权重",
        "Set to 0 to use the default (1)": "设为 0 则使用默认值 (1)",
        "Notes": "备注",
        "Save": "保存",
        "Saved.": "已保存。",
        "Additional Networks": "附加网络 (Additional Networks)",
        "Enable": "启用",
        "Model": "模型",
        "Weight": "权重",
        # summary labels (core.networks.kohya.lora_summary)
        "Output name": "输出名称",
        "Base model version": "底模版本",
        "Base model": "底模",
        "Base model hash": "底模哈希",
        "VAE": "VAE",
        "Network type": "网络类型",
        "Network module": "网络模块",
        "Network dim / alpha": "网络维度 (dim) / alpha",
        "Network args": "网络参数",
        "Resolution": "分辨率 (resolution)",
        "Bucket resolutions": "分桶分辨率",
        "Clip skip": "CLIP 终止层数 (Clip skip)",
        "Epoch": "轮数 (Epoch)",
        "Steps": "迭代步数",
        "Training images (with repeats)": "训练图片数（含重复）",
        "Dataset size (images)": "数据集大小（图片）",
        "Regularization images": "正则化图片数",
        "Batch size": "单批数量",
        "Learning rates": "学习率",
        "Optimizer": "优化器",
        "LR scheduler": "学习率调度器",
        "Mixed precision": "混合精度",
        "Noise offset": "噪声偏移 (noise_offset)",
        "Seed": "随机种子 (Seed)",
        "Training started": "训练开始",
        "Training finished": "训练结束",
        "Training comment": "训练备注",
        "Hash (Lora hashes)": "哈希 (Lora hashes)",
        "File size": "文件大小",
        "File": "文件",
        # card types, on tiles without a preview picture (Card.type_label)
        "Checkpoint": "模型",
        "LoRA": "LoRA",
        "LyCORIS": "LyCORIS",
        "Hypernetwork": "超网络 (Hypernetwork)",
    },
}
STRINGS["en"] = {key: key for key in STRINGS["zh-CN"]}

# Puts the clicked card's text into the prompt at the cursor, or takes it out when it is
# already there (A1111 cardClicked / tryToRemoveExtraNetworkFromPrompt). Args: tag, prompt.
_INSERT_JS = """
(tag, prompt) => {
  const text = prompt ?? "";
  if (!tag) return text;
  const box = document.querySelector("#%(elem_id)s textarea");
  const esc = (s) => s.replace(/[.*+?^${}()|[\\]\\\\]/g, "\\\\$&");
  const m = tag.match(/^<([^:>]+):([^:>]+):[^>]*>/);
  const pattern = m ? new RegExp("\\\\s?<" + esc(m[1]) + ":" + esc(m[2]) + ":[^>]*>" +
                                 esc(tag.slice(m[0].length)), "")
                    : new RegExp("\\\\s?" + esc(tag));
  if (pattern.test(text)) return text.replace(pattern, "").replace(/^\\s+/, "");
  let pos = box ? box.selectionStart : text.length;
  // A box never clicked into reports 0: add to the end, like the WebUI.
  if (pos === 0 && box && box.selectionEnd === 0 && text.length > 0 && !box.dataset.kilnCursor) pos = text.length;
  const before = text.slice(0, pos), after = text.slice(pos);
  const left = before && !/\\s$/.test(before) ? " " : "";
  const right = after && !/^[\\s,]/.test(after) ? " " : "";
  const result = before + left + tag + right + after;
  const caret = (before + left + tag).length;
  if (box) setTimeout(() => { box.selectionStart = box.selectionEnd = caret; box.dataset.kilnCursor = "1"; }, 60);
  return result;
}
"""
# Remember that the user placed the cursor, so position 0 then means "at the start".
_TRACK_CURSOR_JS = """
() => {
  const box = document.querySelector("#%(elem_id)s textarea");
  if (box && !box.dataset.kilnTracked) {
    box.dataset.kilnTracked = "1";
    ["click", "keyup", "select"].forEach((e) => box.addEventListener(e, () => { box.dataset.kilnCursor = "1"; }));
  }
}
"""


# -------------------------------------------------------------------- strings --
def i18n_tables() -> dict[str, dict[str, str]]:
    """{locale: {key: text}} for ``gr.I18n``; merge into ui/i18n.py's EN / ZH_CN."""
    return {locale: dict(table) for locale, table in STRINGS.items()}


def tr(key: str) -> I18nData:
    """A label the browser translates; KeyError for a key without an entry (none ship untranslated)."""
    if key not in STRINGS["en"]:
        raise KeyError(f"UI string {key!r} is missing from ui/extra_networks.py STRINGS")
    return I18nData(key)


def order_radio(**kwargs: Any) -> gr.Radio:
    """The sort order's radio, read by the page-load event: the browser can send its shown label
    ("升序") instead of the value while the page is still starting, so a label in any language
    stands for its value ("Ascending") rather than failing the listing with an error. (A gr.Radio
    with its own preprocess: a subclass would be a new front-end component to Gradio.)"""
    radio = gr.Radio(**kwargs)
    preprocess = radio.preprocess

    def label_or_value(payload: Any) -> Any:
        for locale in STRINGS.values():
            for key in (ASCENDING, DESCENDING):
                if payload == locale.get(key) and payload != key:
                    payload = key
        return preprocess(payload)

    radio.preprocess = label_or_value
    return radio


def translate(key: str, request: Any = None) -> str:
    """Run-time text in the browser's language; unknown keys (file names, values) pass through."""
    from ui.i18n import request_locale

    return STRINGS.get(request_locale(request), {}).get(key, key)


# --------------------------------------------------------------------- picker --
def picker_tags(values: Sequence[Any]) -> str:
    """``<lora:name:weight>`` for each enabled row of (enable, model, weight) triples; rows without
    a model or with weight 0 (no effect) are left out."""
    tags = []
    for i in range(0, len(values) - len(values) % 3, 3):
        enabled, model, weight = values[i], values[i + 1], values[i + 2]
        if not enabled or not model or model == PICKER_NONE:
            continue
        try:
            weight = round(float(weight), 4)
        except (TypeError, ValueError):
            continue
        if weight == 0:
            continue
        shown = str(int(weight)) if weight == int(weight) else repr(weight)
        tags.append(f"<lora:{model}:{shown}>")
    return " ".join(tags)


def apply_picker(prompt: str, *values: Any) -> str:
    """The job's prompt with the picker's tags appended (the integrator calls it at Generate)."""
    tags = picker_tags(values)
    if not tags:
        return prompt
    prompt = (prompt or "").rstrip()
    return f"{prompt} {tags}" if prompt else tags


# ---------------------------------------------------------------------- tiles --
class _Thumbnails:
    """Card pictures, made once per preview file version (the gallery re-sends them on every search)."""

    def __init__(self) -> None:
        self._cache: dict[tuple, Image.Image | None] = {}
        self._tile: Path | None = None

    def get(self, preview: Path | None) -> Image.Image | None:
        """The preview scaled for a card; None when there is none or it cannot be read."""
        if preview is None:
            return None
        try:
            key = (str(preview), preview.stat().st_mtime_ns)
        except OSError:
            return None
        if key not in self._cache:
            self._cache[key] = self._load(preview)
        return self._cache[key]

    @staticmethod
    def _load(preview: Path) -> Image.Image | None:
        try:
            with Image.open(preview) as img:
                img = img.convert("RGB")
                img.thumbnail((TILE_SIZE[0] * 2, TILE_SIZE[1] * 2))
                return img
        except (OSError, ValueError, Image.DecompressionBombError):  # unreadable or not a picture
            return None

    def tile(self) -> Path:
        """The compact tiles' image: a file (gradio serves it from the temp folder) whose name the
        CSS recognises; a plain light strip, so a browser without ``:has()`` still shows a tile."""
        if self._tile is None or not self._tile.is_file():
            path = Path(tempfile.mkdtemp(prefix="kiln-cards-")) / COMPACT_TILE_FILE
            Image.new("RGB", (16, 4), (228, 228, 232)).save(path)
            self._tile = path
        return self._tile


def gallery_item(card: Card, picture: Image.Image | None, tile: Path, request: Any = None) -> tuple[Any, str]:
    """(image, caption) for one card: its picture and name, or, without a picture, the compact
    tile whose caption is the card's type (in the browser's language) above its name."""
    name = ("⚠ " if card.error else "") + card.name
    if picture is not None:
        return picture, name
    kind = translate(card.type_label or TAB_TITLES.get(card.kind, card.kind), request)
    return str(tile), f"{kind}\n{name}"


# ------------------------------------------------------------------ rendering --
def _table(headers: list[str], rows: list[Sequence[Any]], request: Any) -> dict[str, Any]:
    return {"headers": [translate(h, request) for h in headers], "data": [list(r) for r in rows]}


def _summary_rows(summary: list[tuple[str, str]], request: Any) -> list[list[str]]:
    return [[translate(label, request), value] for label, value in summary]


def _error_html(message: str | None) -> str:
    return f'<div class="kiln-error kiln-warning">{html.escape(message)}</div>' if message else ""


# ---------------------------------------------------------------------- build --
def build_extra_networks(engine: Engine, prompt_box: gr.Textbox, catalog: NetworkCatalog | None = None) -> dict[str, Any]:
    """Create the panel, the metadata viewer and the picker; wire them; return the components.

    Keys: ``galleries`` {kind: Gallery}, ``search``, ``sort``, ``order``, ``refresh``,
    ``message``, ``summary``, ``tags``, ``dirs``, ``raw``, ``description``, ``activation``,
    ``weight``, ``notes``, ``save``, ``selected`` (LoRA name shown), ``pending_tag``,
    ``checkpoint_pick`` (title of a clicked checkpoint card: wire its ``.change`` to load it),
    ``picker_inputs`` (15 components: enable, model, weight × 5), ``picker_models``,
    ``catalog``.
    """
    catalog = catalog if catalog is not None else NetworkCatalog(engine)
    thumbs = _Thumbnails()
    elem_id = prompt_box.elem_id or "txt2img-prompt"
    c: dict[str, Any] = {"catalog": catalog, "galleries": {}, "shown": {}, "prompt_box": prompt_box}

    with gr.Accordion(tr("Extra networks"), open=True, elem_id="kiln-extra-networks"):
        with gr.Row(equal_height=True):
            c["search"] = gr.Textbox(label=tr("Search"), scale=4, elem_id="kiln-en-search", max_lines=1)
            c["sort"] = gr.Dropdown(label=tr("Sort by"), choices=[(tr(label), value) for label, value in SORT_CHOICES],
                                    value="name", scale=2, elem_id="kiln-en-sort")
            c["order"] = order_radio(label=" ", show_label=False, choices=[(tr(ASCENDING), ASCENDING),
                                                                         (tr(DESCENDING), DESCENDING)],
                                  value=ASCENDING, scale=2, elem_id="kiln-en-order")
            c["refresh"] = gr.Button(tr("Refresh"), scale=1, min_width=90, elem_id="kiln-en-refresh")
        with gr.Tabs(elem_id="kiln-en-tabs"):
            for kind in KINDS:
                with gr.Tab(tr(TAB_TITLES[kind]), id=f"kiln-en-{kind}"):
                    # fit_columns=False: two cards stay card-sized, not half the panel each;
                    # buttons=[]: no "download all" button over the first row of cards.
                    c["galleries"][kind] = gr.Gallery(
                        show_label=False, columns=6, height=330, allow_preview=False, object_fit="cover",
                        fit_columns=False, buttons=[], interactive=False, elem_id=f"kiln-en-gallery-{kind}",
                        elem_classes=["kiln-en-gallery"])
                    c["shown"][kind] = gr.State([])  # [(name, prompt tag)] in gallery order
        c["message"] = gr.HTML("", elem_id="kiln-en-message")
        c["pending_tag"] = gr.Textbox(visible="hidden", elem_id="kiln-en-pending")
        c["checkpoint_pick"] = gr.Textbox(visible="hidden", elem_id="kiln-en-checkpoint-pick")

    with gr.Accordion(tr("LoRA metadata"), open=False, elem_id="kiln-en-metadata") as c["metadata_box"]:
        c["selected"] = gr.Markdown(tr("Click a LoRA card to see its training metadata."),
                                    elem_id="kiln-en-selected")
        c["selected_name"] = gr.Textbox(visible="hidden", elem_id="kiln-en-selected-name")
        with gr.Tabs():
            with gr.Tab(tr("Summary")):
                c["summary"] = localize_headers(gr.Dataframe(headers=["Field", "Value"], interactive=False, wrap=True,
                                                             column_widths=["32%", "68%"], elem_id="kiln-en-summary"),
                                                ("Field", "Value"), translate)
            with gr.Tab(tr("Tag frequency")):
                c["tags"] = localize_headers(gr.Dataframe(headers=["Folder", "Tag", "Count"], interactive=False,
                                                          max_height=400, elem_id="kiln-en-tags"),
                                             ("Folder", "Tag", "Count"), translate)
            with gr.Tab(tr("Dataset folders")):
                dirs = ("Folder", "Repeats", "Images", "Images × repeats", "Kind")
                c["dirs"] = localize_headers(gr.Dataframe(headers=list(dirs), interactive=False, elem_id="kiln-en-dirs"),
                                             dirs, translate)
            with gr.Tab(tr("Raw metadata")):
                c["raw"] = gr.JSON(elem_id="kiln-en-raw")
            with gr.Tab(tr("User notes")):
                c["description"] = gr.Textbox(label=tr("Description"), lines=2, elem_id="kiln-en-description")
                c["activation"] = gr.Textbox(label=tr("Activation text"),
                                             info=tr("Will be added to prompt along with Lora"),
                                             elem_id="kiln-en-activation")
                c["weight"] = gr.Slider(0.0, 2.0, value=0.0, step=0.01, label=tr("Preferred weight"),
                                        info=tr("Set to 0 to use the default (1)"), elem_id="kiln-en-weight")
                c["notes"] = gr.Textbox(label=tr("Notes"), lines=4, elem_id="kiln-en-notes")
                c["save"] = gr.Button(tr("Save"), variant="primary", elem_id="kiln-en-save")
                c["save_message"] = gr.HTML("", elem_id="kiln-en-save-message")

    picker_inputs: list[Any] = []
    picker_models: list[gr.Dropdown] = []
    with gr.Accordion(tr("Additional Networks"), open=False, elem_id="kiln-additional-networks"):
        for i in range(PICKER_ROWS):
            with gr.Row(equal_height=True):
                enable = gr.Checkbox(label=tr("Enable"), value=False, scale=1, min_width=90,
                                     elem_id=f"kiln-an-enable-{i}")
                model = gr.Dropdown(label=tr("Model"), choices=[PICKER_NONE], value=PICKER_NONE, scale=4,
                                    elem_id=f"kiln-an-model-{i}")
                weight = gr.Slider(-1.0, 2.0, value=1.0, step=0.05, label=tr("Weight"), scale=4,
                                   elem_id=f"kiln-an-weight-{i}")
            picker_inputs += [enable, model, weight]
            picker_models.append(model)
    c["picker_inputs"], c["picker_models"] = picker_inputs, picker_models

    _wire(c, catalog, thumbs, elem_id)
    return c


def _wire(c: dict[str, Any], catalog: NetworkCatalog, thumbs: _Thumbnails, elem_id: str) -> None:
    galleries, shown = c["galleries"], c["shown"]
    view_inputs = [c["search"], c["sort"], c["order"]]
    gallery_outputs = [x for kind in KINDS for x in (galleries[kind], shown[kind])]

    def listing(search: str, sort: str, order: str, request: Any = None) -> list[Any]:
        out: list[Any] = []
        tile = thumbs.tile()
        for kind in KINDS:
            cards = catalog.cards(kind, search or "", sort or "name", order == DESCENDING)
            items = [gallery_item(card, thumbs.get(card.preview), tile, request) for card in cards]
            out += [items, [(card.name, card.prompt_tag) for card in cards]]
        return out

    def picker_choices() -> list[Any]:
        names = [PICKER_NONE] + [card.name for card in catalog.cards(LORA)]
        return [gr.update(choices=names) for _ in c["picker_models"]]

    def show(search: str, sort: str, order: str, request: gr.Request = None):
        return listing(search, sort, order, request)

    def refresh(search: str, sort: str, order: str, request: gr.Request = None):
        catalog.refresh()
        return [*listing(search, sort, order, request), *picker_choices()]

    page_load_outputs = gallery_outputs + c["picker_models"]
    for event in (c["sort"].change, c["order"].change):
        event(show, inputs=view_inputs, outputs=gallery_outputs, show_progress="hidden")
    c["search"].change(show, inputs=view_inputs, outputs=gallery_outputs, show_progress="hidden",
                       trigger_mode="always_last")
    c["refresh"].click(refresh, inputs=view_inputs, outputs=page_load_outputs, show_progress="minimal")
    # Fill the galleries when the page opens (cheap: headers and thumbnails are cached).
    root = gr.context.Context.root_block
    if root is not None:
        root.load(refresh, inputs=view_inputs, outputs=page_load_outputs, show_progress="hidden")
        root.load(None, js=_TRACK_CURSOR_JS % {"elem_id": elem_id})

    viewer = [c["selected"], c["selected_name"], c["summary"], c["tags"], c["dirs"], c["raw"], c["description"],
              c["activation"], c["weight"], c["notes"], c["message"], c["save_message"]]

    def viewer_values(name: str, request: Any) -> list[Any]:
        meta = catalog.metadata(LORA, name)
        user = meta["user"]
        try:
            weight = float(user.get("preferred weight") or 0.0)
        except (TypeError, ValueError):
            weight = 0.0
        return [f"**{html.escape(name)}** — `{html.escape(meta['path'])}`", name,
                _table(["Field", "Value"], _summary_rows(meta["summary"], request), request),
                _table(["Folder", "Tag", "Count"], meta["tag_frequency"], request),
                _table(["Folder", "Repeats", "Images", "Images × repeats", "Kind"], meta["dataset_dirs"], request),
                meta["raw"], str(user.get("description") or ""), str(user.get("activation text") or ""),
                weight, str(user.get("notes") or ""), _error_html(meta["error"]), ""]

    for kind in KINDS:
        def select(items: list, evt: gr.SelectData, request: gr.Request, kind: str = kind):
            index = int(evt.index) if isinstance(evt.index, int) else int((evt.index or [0])[0])
            if not 0 <= index < len(items):
                return {c["pending_tag"]: ""}
            name, tag = items[index]
            if kind == CHECKPOINT:
                return {c["pending_tag"]: "", c["checkpoint_pick"]: tag}
            update: dict[Any, Any] = {c["pending_tag"]: tag}
            if kind == LORA:
                update[c["metadata_box"]] = gr.Accordion(open=True)
                try:
                    update.update(zip(viewer, viewer_values(name, request)))
                except KilnError as e:
                    update[c["message"]] = _error_html(e.message)
            else:
                card_error = next((cd.error for cd in catalog.cards(kind) if cd.name == name), None)
                update[c["message"]] = _error_html(card_error)
            return update

        _chain_insert(galleries[kind], select, shown[kind], c, viewer, elem_id)

    def save(name: str, description: str, activation: str, weight: float, notes: str, search: str, sort: str,
             order: str, request: gr.Request):
        if not name:
            return [gr.skip()] * (1 + len(gallery_outputs))
        try:
            catalog.write_user_metadata(LORA, name, {"description": description, "activation text": activation,
                                                     "preferred weight": float(weight or 0.0), "notes": notes})
        except KilnError as e:
            return [_error_html(e.message), *[gr.skip()] * len(gallery_outputs)]
        done = f'<div class="kiln-infotext">{html.escape(translate("Saved.", request))}</div>'
        return [done, *listing(search, sort, order, request)]

    c["save"].click(save, inputs=[c["selected_name"], c["description"], c["activation"], c["weight"], c["notes"],
                                  *view_inputs],
                    outputs=[c["save_message"], *gallery_outputs], show_progress="hidden")


def _chain_insert(gallery: gr.Gallery, select, shown: gr.State, c: dict[str, Any], viewer: list[Any],
                  elem_id: str) -> None:
    """select (server: which card, metadata) → then JS: put the tag into the prompt at the cursor."""
    prompt_box = c["prompt_box"]
    gallery.select(select, inputs=[shown], outputs=[c["pending_tag"], c["checkpoint_pick"], c["metadata_box"], *viewer],
                   show_progress="hidden").then(
        None, inputs=[c["pending_tag"], prompt_box], outputs=[prompt_box],
        js=_INSERT_JS % {"elem_id": elem_id})
