"""Dataset › Tag editor: the captions of a folder, a tag table with file counts, selection by tags,
batch edits with undo, a training-caption preview, and a save that backs the old captions up.

Seed 000's path (the dataset-tag-editor extension): load the folder, sort the tags by
frequency (``1girl 100``), pick the tags that describe the person, "remove selected tags",
save. Everything runs on ``core.dataset.tag_editor.TagEditor`` kept per browser session; the
handlers are plain functions of it, so tests call them without a browser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from core.dataset.caption_rules import CaptionRules, preview_caption
from core.dataset.images import UnreadableImage, open_image
from core.dataset.tag_editor import TagEditor
from core.errors import KilnError
from ui.dataset.strings import Strings
from ui.i18n import localize_headers

if TYPE_CHECKING:
    from core.engine import Engine
    from core.jobs import JobQueue

GALLERY_LIMIT = 120  # thumbnails shown of the current selection (the table and edits cover all)
THUMBNAIL = (160, 160)

ZH = {
    "Tag editor": "标签编辑器",
    "Dataset folder": "数据集目录",
    "Folder of pictures and their .txt captions": "存放图片及其 .txt 标注的文件夹",
    "Caption extension": "标注文件扩展名 (caption_extension)",
    "Include sub-folders": "包含子文件夹",
    "Load": "加载",
    "Save": "保存",
    "Undo": "撤销",
    "Sort by": "排序方式",
    "Frequency": "频率",
    "Rarest first": "最少优先",
    "Name": "名称",
    "Filter tags": "筛选标签",
    "Tag": "标签",
    "Files": "文件数",
    "Tags": "标签",
    "Select images": "选择图片",
    "With tags": "包含标签",
    "Without tags": "排除标签",
    "Match": "匹配方式",
    "All of them (AND)": "全部 (AND)",
    "Any of them (OR)": "任一 (OR)",
    "Apply selection": "应用选择",
    "Clear selection": "清除选择",
    "Batch edit captions": "批量编辑标注",
    "Apply to": "应用于",
    "All images": "全部图片",
    "Selected images": "选中的图片",
    "Remove selected tags": "移除选中标签",
    "Move to front": "移到最前",
    "Merge selected tags into": "合并选中标签为",
    "Merge": "合并",
    "Fewer than N files": "少于 N 个文件",
    "Remove rarer tags": "移除低频标签",
    "More than N files": "多于 N 个文件",
    "Remove commoner tags": "移除高频标签",
    "Search and replace: tag": "搜索并替换：标签",
    "Replace with": "替换为",
    "Replace": "替换",
    "Add tags": "添加标签",
    "Position": "位置",
    "Front": "开头",
    "Back": "末尾",
    "Add": "添加",
    "Trigger word": "触发词",
    "Put first": "置于最前",
    "Sort tags by name": "按名称排序标签",
    "Remove duplicates": "移除重复标签",
    "Caption of the selected image": "选中图片的标注",
    "Apply caption": "应用标注",
    "Training preview": "训练预览",
    "Shuffle caption": "打乱标注 (shuffle_caption)",
    "Keep tokens": "保留前 N 个标签 (keep_tokens)",
    "Keep tokens separator": "保留标签分隔符 (keep tokens separator)",
    "Caption dropout rate": "标注丢弃率 (caption dropout rate)",
    "Tag dropout rate": "标签丢弃率 (caption tag dropout rate)",
    "Max token length": "最大 token 长度 (max token length)",
    "Pictures": "图片",
    "Loaded {n} images with {tags} tags from {folder}.": "已从 {folder} 加载 {n} 张图片，共 {tags} 个标签。",
    "{changed} captions changed, not saved yet.": "{changed} 个标注已修改，尚未保存。",
    "{selected} of {n} images selected.": "已选择 {selected} / {n} 张图片。",
    "{label}: {count} captions changed.": "{label}：修改了 {count} 个标注。",
    "Undone: {label}.": "已撤销：{label}。",
    "Nothing to undo.": "没有可撤销的操作。",
    "Saved {n} captions. The previous ones are in {backup}.": "已保存 {n} 个标注。原标注备份在 {backup}。",
    "Nothing to save.": "没有需要保存的修改。",
    "Load a folder first.": "请先加载一个文件夹。",
    "Choose some tags first.": "请先选择标签。",
    "There are unsaved changes: press Save, or press Load again to discard them.":
        "有未保存的修改：请点击保存，或再次点击加载以放弃修改。",
    "Click a picture to see its caption and its training preview.": "点击图片查看其标注与训练预览。",
    "Epoch {n}": "第 {n} 轮",
    "Always kept first": "始终保留在最前",
    "Showing the first {shown} of {n} pictures of the selection.": "显示选择中的前 {shown} / {n} 张图片。",
}
STRINGS = {"en": {key: key for key in ZH}, "zh-CN": ZH}
TITLE = "Tag editor"
S = Strings(STRINGS)

SORTS = (("Frequency", "frequency"), ("Rarest first", "rarest"), ("Name", "name"))
ALL, SELECTED = "all", "selected"


@dataclass
class Session:
    """One browser's editor: the captions, the current selection (None: every image), and whether
    the next Load may discard unsaved changes."""

    editor: TagEditor | None = None
    selection: list[int] | None = None
    discard_armed: bool = False
    current: int | None = None  # the image whose caption is open


def _targets(session: Session, apply_to: str) -> list[int] | None:
    return session.selection if apply_to == SELECTED and session.selection is not None else None


def tag_choices(editor: TagEditor | None) -> list[tuple[str, str]]:
    """Dropdown choices "1girl (100)" → "1girl", most frequent first."""
    if editor is None:
        return []
    return [(f"{tag} ({count})", tag) for tag, count in editor.tag_table()]


def table_rows(editor: TagEditor | None, sort: str, filter_text: str, session: Session) -> list[list[Any]]:
    if editor is None:
        return []
    return [[tag, count] for tag, count in editor.tag_table(sort=sort, filter_text=filter_text or "",
                                                            indices=session.selection)]


def status_text(session: Session, request: Any, message: str = "") -> str:
    editor = session.editor
    if editor is None:
        return message or S.say("Load a folder first.", request)
    lines = [message] if message else []
    if session.selection is not None:
        lines.append(S.say("{selected} of {n} images selected.", request, selected=len(session.selection),
                           n=len(editor)))
    if editor.changed:
        lines.append(S.say("{changed} captions changed, not saved yet.", request, changed=len(editor.changed)))
    return "  \n".join(lines)


def gallery_items(session: Session, request: Any) -> tuple[list[Any], list[int], str]:
    editor = session.editor
    if editor is None:
        return [], [], ""
    chosen = session.selection if session.selection is not None else list(range(len(editor)))
    shown = chosen[:GALLERY_LIMIT]
    items = []
    kept = []
    for i in shown:
        try:
            image = open_image(editor.entries[i].image)
        except UnreadableImage:
            continue
        image.thumbnail(THUMBNAIL)
        items.append((image, editor.entries[i].image.name))
        kept.append(i)
    note = (S.say("Showing the first {shown} of {n} pictures of the selection.", request, shown=len(shown),
                  n=len(chosen)) if len(chosen) > len(shown) else "")
    return items, kept, note


def preview_markdown(session: Session, rules: CaptionRules, max_token_length: int, count_tokens, request: Any) -> str:
    editor = session.editor
    if editor is None or session.current is None:
        return S.say("Click a picture to see its caption and its training preview.", request)
    preview = preview_caption(editor.caption_text(session.current), rules, epochs=3,
                              max_token_length=max_token_length, count_tokens=count_tokens)
    lines = []
    if preview.fixed:
        lines.append(f"**{S.say('Always kept first', request)}:** {', '.join(preview.fixed)}")
    for n, text in enumerate(preview.epochs, 1):
        lines.append(f"- {S.say('Epoch {n}', request, n=n)}: `{text or '∅'}`")
    lines += [f"> ⚠️ {w}" for w in preview.warnings]
    return "\n".join(lines)


def build(engine: Engine, queue: JobQueue) -> None:  # noqa: ARG001 (edits are file work, not queue jobs)
    tr = S.tr
    session_state = gr.State(Session())
    shown_state = gr.State([])
    with gr.Row():
        folder = gr.Textbox(label=tr("Dataset folder"), placeholder=tr("Folder of pictures and their .txt captions"),
                            elem_id="tag-editor-folder", scale=4)
        extension = gr.Textbox(value=".txt", label=tr("Caption extension"), elem_id="tag-editor-extension",
                               scale=1, min_width=110)
        recursive = gr.Checkbox(False, label=tr("Include sub-folders"), elem_id="tag-editor-recursive", scale=1)
        load = gr.Button(tr("Load"), variant="primary", elem_id="tag-editor-load", scale=0, min_width=100)
        undo = gr.Button(tr("Undo"), elem_id="tag-editor-undo", scale=0, min_width=90)
        save = gr.Button(tr("Save"), variant="primary", elem_id="tag-editor-save", scale=0, min_width=100)
    status = gr.Markdown(elem_id="tag-editor-status")
    unsaved = gr.Number(0, visible=False, elem_id="tag-editor-unsaved")
    with gr.Row():
        with gr.Column(scale=3):
            gallery = gr.Gallery(label=tr("Pictures"), columns=6, height=420, allow_preview=False,
                                 elem_id="tag-editor-gallery")
            gallery_note = gr.Markdown(elem_id="tag-editor-gallery-note")
            caption = gr.Textbox(label=tr("Caption of the selected image"), lines=3, elem_id="tag-editor-caption")
            apply_caption = gr.Button(tr("Apply caption"), elem_id="tag-editor-apply-caption")
            with gr.Accordion(tr("Training preview"), open=True):
                with gr.Row():
                    shuffle = gr.Checkbox(True, label=tr("Shuffle caption"), elem_id="tag-editor-shuffle")
                    keep_tokens = gr.Number(1, precision=0, minimum=0, label=tr("Keep tokens"),
                                            elem_id="tag-editor-keep-tokens")
                    keep_separator = gr.Textbox("", label=tr("Keep tokens separator"), max_lines=1)
                with gr.Row():
                    caption_dropout = gr.Slider(0, 1, 0, step=0.01, label=tr("Caption dropout rate"))
                    tag_dropout = gr.Slider(0, 1, 0, step=0.01, label=tr("Tag dropout rate"))
                    max_tokens = gr.Dropdown([75, 150, 225], value=75, label=tr("Max token length"))
                preview = gr.Markdown(elem_id="tag-editor-preview")
        with gr.Column(scale=2):
            with gr.Row():
                sort = gr.Radio([(tr(label), value) for label, value in SORTS], value="frequency",
                                label=tr("Sort by"), elem_id="tag-editor-sort")
                filter_text = gr.Textbox(label=tr("Filter tags"), max_lines=1, elem_id="tag-editor-filter")
            table = localize_headers(gr.Dataframe(headers=["Tag", "Files"], value=[], interactive=False,
                                                  max_height=360, elem_id="tag-editor-table"), ("Tag", "Files"), S.say)
            with gr.Accordion(tr("Select images"), open=False):
                include = gr.Dropdown([], multiselect=True, label=tr("With tags"), elem_id="tag-editor-include")
                exclude = gr.Dropdown([], multiselect=True, label=tr("Without tags"), elem_id="tag-editor-exclude")
                mode = gr.Radio([(tr("All of them (AND)"), "AND"), (tr("Any of them (OR)"), "OR")], value="AND",
                                label=tr("Match"))
                with gr.Row():
                    select = gr.Button(tr("Apply selection"), elem_id="tag-editor-select")
                    clear = gr.Button(tr("Clear selection"), elem_id="tag-editor-clear")
            with gr.Accordion(tr("Batch edit captions"), open=True):
                apply_to = gr.Radio([(tr("All images"), ALL), (tr("Selected images"), SELECTED)], value=ALL,
                                    label=tr("Apply to"), elem_id="tag-editor-apply-to")
                tags = gr.Dropdown([], multiselect=True, label=tr("Tags"), elem_id="tag-editor-tags")
                with gr.Row():
                    remove = gr.Button(tr("Remove selected tags"), variant="stop", elem_id="tag-editor-remove")
                    front = gr.Button(tr("Move to front"), elem_id="tag-editor-front")
                with gr.Row():
                    merge_into = gr.Textbox(label=tr("Merge selected tags into"), max_lines=1,
                                            elem_id="tag-editor-merge-into")
                    merge = gr.Button(tr("Merge"), elem_id="tag-editor-merge", scale=0, min_width=90)
                with gr.Row():
                    below = gr.Number(2, precision=0, minimum=1, label=tr("Fewer than N files"))
                    remove_below = gr.Button(tr("Remove rarer tags"), elem_id="tag-editor-remove-below")
                with gr.Row():
                    above = gr.Number(100, precision=0, minimum=0, label=tr("More than N files"))
                    remove_above = gr.Button(tr("Remove commoner tags"), elem_id="tag-editor-remove-above")
                with gr.Row():
                    replace_old = gr.Textbox(label=tr("Search and replace: tag"), max_lines=1)
                    replace_new = gr.Textbox(label=tr("Replace with"), max_lines=1)
                    replace = gr.Button(tr("Replace"), elem_id="tag-editor-replace", scale=0, min_width=90)
                with gr.Row():
                    add_text = gr.Textbox(label=tr("Add tags"), max_lines=1)
                    position = gr.Radio([(tr("Front"), "front"), (tr("Back"), "back")], value="front",
                                        label=tr("Position"))
                    add = gr.Button(tr("Add"), elem_id="tag-editor-add", scale=0, min_width=90)
                with gr.Row():
                    trigger = gr.Textbox(label=tr("Trigger word"), max_lines=1, elem_id="tag-editor-trigger")
                    trigger_first = gr.Button(tr("Put first"), elem_id="tag-editor-trigger-first", scale=0,
                                              min_width=110)
                with gr.Row():
                    sort_name = gr.Button(tr("Sort tags by name"))
                    dedupe = gr.Button(tr("Remove duplicates"))

    def count_tokens(text: str) -> int:
        return len(engine.tokenizer()(text, add_special_tokens=False)["input_ids"])

    def rules_of(shuffle_on, keep, separator, drop, tag_drop) -> CaptionRules:
        return CaptionRules(shuffle_caption=bool(shuffle_on), keep_tokens=int(keep or 0),
                            keep_tokens_separator=separator or "", caption_dropout_rate=float(drop or 0),
                            caption_tag_dropout_rate=float(tag_drop or 0))

    preview_inputs = [shuffle, keep_tokens, keep_separator, caption_dropout, tag_dropout, max_tokens]

    def views(session: Session, sort_by, filter_by, request, message=""):
        """Everything an edit changes: state, status, table, the three tag lists, the caption."""
        choices = tag_choices(session.editor)
        headers = [S.say("Tag", request), S.say("Files", request)]
        current = session.editor.caption_text(session.current) if session.editor and session.current is not None else ""
        return (session, status_text(session, request, message),
                gr.Dataframe(value=table_rows(session.editor, sort_by, filter_by, session), headers=headers),
                gr.Dropdown(choices=choices), gr.Dropdown(choices=choices), gr.Dropdown(choices=choices, value=[]),
                current, len(session.editor.changed) if session.editor else 0)

    view_outputs = [session_state, status, table, include, exclude, tags, caption, unsaved]

    def on_load(session: Session, path, ext, rec, sort_by, filter_by, request: gr.Request):
        if session.editor is not None and session.editor.changed and not session.discard_armed:
            session.discard_armed = True
            message = S.say("There are unsaved changes: press Save, or press Load again to discard them.", request)
            return (*views(session, sort_by, filter_by, request, message), gr.Gallery(), [], gr.Markdown())
        try:
            editor = TagEditor.load((path or "").strip() or ".", caption_extension=(ext or ".txt").strip(),
                                    recursive=bool(rec))
        except KilnError as exc:
            session.discard_armed = False
            return (*views(session, sort_by, filter_by, request, f"❌ {exc.message}"), gr.Gallery(), [],
                    gr.Markdown())
        fresh = Session(editor)
        message = S.say("Loaded {n} images with {tags} tags from {folder}.", request, n=len(editor),
                        tags=len(editor.counts()), folder=editor.folder)
        items, shown, note = gallery_items(fresh, request)
        return (*views(fresh, sort_by, filter_by, request, message), items, shown, note)

    load.click(on_load, [session_state, folder, extension, recursive, sort, filter_text],
               [*view_outputs, gallery, shown_state, gallery_note])

    def edit(operation, extras: int):
        """A batch-edit handler: ``operation(editor, targets, *values)`` → (label, changed). Gradio
        reads a handler's inputs from its signature (no ``*args``), hence one shape per arity."""
        def run(session: Session, target, sort_by, filter_by, values, request):
            if session.editor is None:
                return views(session, sort_by, filter_by, request, S.say("Load a folder first.", request))
            try:
                label, count = operation(session.editor, _targets(session, target), *values)
            except KilnError as exc:
                return views(session, sort_by, filter_by, request, f"❌ {exc.message}")
            session.discard_armed = False
            message = S.say("{label}: {count} captions changed.", request, label=label, count=count)
            return views(session, sort_by, filter_by, request, message)

        def no_value(session: Session, target, sort_by, filter_by, request: gr.Request):
            return run(session, target, sort_by, filter_by, (), request)

        def one_value(session: Session, target, sort_by, filter_by, a, request: gr.Request):
            return run(session, target, sort_by, filter_by, (a,), request)

        def two_values(session: Session, target, sort_by, filter_by, a, b, request: gr.Request):
            return run(session, target, sort_by, filter_by, (a, b), request)
        return (no_value, one_value, two_values)[extras]

    def need_tags(chosen) -> list[str]:
        if not chosen:
            raise KilnError(S.say("Choose some tags first."))
        return list(chosen)

    operations = [
        (remove, [tags], lambda e, ix, chosen: ("remove tags", e.remove_tags(need_tags(chosen), ix))),
        (front, [tags], lambda e, ix, chosen: ("move to front", e.move_to_front(need_tags(chosen), ix))),
        (merge, [tags, merge_into],
         lambda e, ix, chosen, new: ("merge tags", e.merge_tags(need_tags(chosen), new, ix))),
        (remove_below, [below], lambda e, ix, n: ("remove by frequency", e.remove_by_frequency(below=int(n), indices=ix))),
        (remove_above, [above], lambda e, ix, n: ("remove by frequency", e.remove_by_frequency(above=int(n), indices=ix))),
        (replace, [replace_old, replace_new],
         lambda e, ix, old, new: ("replace tags", e.replace_tags({old: new}, ix))),
        (add, [add_text, position], lambda e, ix, text, where: (f"add tags ({where})",
                                                                e.add_tags(text, position=where, indices=ix))),
        (trigger_first, [trigger], lambda e, ix, word: ("trigger word first", e.put_trigger_first(word, ix))),
        (sort_name, [], lambda e, ix: ("sort by name", e.sort_tags(key="name", indices=ix))),
        (dedupe, [], lambda e, ix: ("remove duplicates", e.dedupe(ix))),
    ]
    for button, extra, operation in operations:
        button.click(edit(operation, len(extra)), [session_state, apply_to, sort, filter_text, *extra], view_outputs)

    def on_apply_caption(session: Session, text, sort_by, filter_by, request: gr.Request):
        if session.editor is None or session.current is None:
            return views(session, sort_by, filter_by, request,
                         S.say("Click a picture to see its caption and its training preview.", request))
        count = session.editor.set_caption(session.current, text or "")
        return views(session, sort_by, filter_by, request,
                     S.say("{label}: {count} captions changed.", request, label="edit caption", count=count))

    apply_caption.click(on_apply_caption, [session_state, caption, sort, filter_text], view_outputs)

    def on_undo(session: Session, sort_by, filter_by, request: gr.Request):
        label = session.editor.undo() if session.editor else None
        message = S.say("Undone: {label}.", request, label=label) if label else S.say("Nothing to undo.", request)
        return views(session, sort_by, filter_by, request, message)

    undo.click(on_undo, [session_state, sort, filter_text], view_outputs)

    def on_save(session: Session, sort_by, filter_by, request: gr.Request):
        if session.editor is None:
            return views(session, sort_by, filter_by, request, S.say("Load a folder first.", request))
        try:
            result = session.editor.save()
        except KilnError as exc:
            return views(session, sort_by, filter_by, request, f"❌ {exc.message}")
        if not result.written and not result.skipped:
            return views(session, sort_by, filter_by, request, S.say("Nothing to save.", request))
        lines = [S.say("Saved {n} captions. The previous ones are in {backup}.", request, n=result.written,
                       backup=result.backup)] + [f"⚠️ {line}" for line in result.skipped]
        return views(session, sort_by, filter_by, request, "  \n".join(lines))

    save.click(on_save, [session_state, sort, filter_text], view_outputs)

    def on_table(session: Session, sort_by, filter_by, request: gr.Request):
        headers = [S.say("Tag", request), S.say("Files", request)]
        return gr.Dataframe(value=table_rows(session.editor, sort_by, filter_by, session), headers=headers)

    sort.change(on_table, [session_state, sort, filter_text], table, show_progress="hidden")
    filter_text.change(on_table, [session_state, sort, filter_text], table, show_progress="hidden")

    def on_select(session: Session, wanted, unwanted, how, sort_by, filter_by, request: gr.Request):
        if session.editor is not None:
            session.selection = session.editor.select(wanted or [], mode=how, exclude=unwanted or [])
        items, shown, note = gallery_items(session, request)
        return (*views(session, sort_by, filter_by, request), items, shown, note)

    def on_clear(session: Session, sort_by, filter_by, request: gr.Request):
        session.selection = None
        items, shown, note = gallery_items(session, request)
        return (*views(session, sort_by, filter_by, request), items, shown, note)

    select.click(on_select, [session_state, include, exclude, mode, sort, filter_text],
                 [*view_outputs, gallery, shown_state, gallery_note])
    clear.click(on_clear, [session_state, sort, filter_text], [*view_outputs, gallery, shown_state, gallery_note])

    def preview_of(session: Session, shuffle_on, keep, separator, drop, tag_drop, limit, request) -> str:
        rules = rules_of(shuffle_on, keep, separator, drop, tag_drop)
        return preview_markdown(session, rules, int(limit or 75), count_tokens, request)

    def on_pick(session: Session, shown: list[int], shuffle_on, keep, separator, drop, tag_drop, limit,
                evt: gr.SelectData, request: gr.Request):
        if session.editor is not None and evt.index is not None and evt.index < len(shown):
            session.current = shown[evt.index]
        text = session.editor.caption_text(session.current) if session.editor and session.current is not None else ""
        return session, text, preview_of(session, shuffle_on, keep, separator, drop, tag_drop, limit, request)

    gallery.select(on_pick, [session_state, shown_state, *preview_inputs], [session_state, caption, preview])

    def on_preview(session: Session, shuffle_on, keep, separator, drop, tag_drop, limit, request: gr.Request):
        return preview_of(session, shuffle_on, keep, separator, drop, tag_drop, limit, request)

    for control in (*preview_inputs, caption):
        control.change(on_preview, [session_state, *preview_inputs], preview, show_progress="hidden")

    # Leaving the page with unsaved captions asks first (the browser's own "leave site?" dialog).
    unsaved.change(None, unsaved, None, js="""(n) => {
      window.kilnTagEditorUnsaved = n;
      if (!window.kilnTagEditorHooked) {
        window.kilnTagEditorHooked = true;
        window.addEventListener('beforeunload', (e) => {
          if (window.kilnTagEditorUnsaved > 0) { e.preventDefault(); e.returnValue = ''; }
        });
      }
    }""")
