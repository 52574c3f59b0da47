"""core/dataset/images.py and captions.py: the reading and writing every dataset tool shares."""

from __future__ import annotations

import pytest
from PIL import Image

from core.dataset.captions import backup_captions, caption_path, read_caption, split_tags, write_caption
from core.dataset.images import UnreadableImage, iter_images, list_images, open_image
from core.errors import KilnError


def test_modes_become_upright_rgb(tmp_path):
    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    rgba.save(tmp_path / "a.png")
    im = open_image(tmp_path / "a.png", background=(0, 255, 0))
    assert im.mode == "RGB" and im.getpixel((1, 1)) == (0, 255, 0) and im.getpixel((0, 0)) == (0, 0, 255)
    Image.new("CMYK", (3, 3), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    r, g, b = open_image(tmp_path / "c.jpg").getpixel((1, 1))
    assert r > 200 and g < 60 and b < 60
    Image.new("I;16", (2, 2), 65535).save(tmp_path / "d.png")
    assert open_image(tmp_path / "d.png").getpixel((0, 0)) == (255, 255, 255)
    pal = Image.new("P", (2, 2), 0)
    pal.putpalette([10, 20, 30] * 256)
    pal.save(tmp_path / "p.gif", transparency=0)
    assert open_image(tmp_path / "p.gif").getpixel((0, 0)) == (255, 255, 255)


def test_exif_rotation_is_honoured(tmp_path):
    im = Image.new("RGB", (4, 2))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    im.save(tmp_path / "r.jpg", exif=exif)
    assert open_image(tmp_path / "r.jpg").size == (2, 4)


def test_broken_files_name_the_file_and_are_skipped_in_a_batch(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"not a jpeg")
    Image.new("RGB", (2, 2)).save(tmp_path / "ok.png")
    with pytest.raises(UnreadableImage, match="empty.png: the file is empty"):
        open_image(tmp_path / "empty.png")
    with pytest.raises(UnreadableImage, match="junk.jpg: not a picture"):
        open_image(tmp_path / "junk.jpg")
    results = list(iter_images(list_images(tmp_path)))
    assert [(p.name, im is not None) for p, im, _ in results] == [("empty.png", False), ("junk.jpg", False),
                                                                  ("ok.png", True)]


def test_list_images_messages(tmp_path):
    with pytest.raises(KilnError, match="folder not found"):
        list_images(tmp_path / "nope")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(KilnError, match="is a file, not a folder"):
        list_images(tmp_path / "f.txt")
    (tmp_path / ".hidden.png").write_bytes(b"x")
    assert list_images(tmp_path) == []


def test_captions_read_legacy_encodings_without_loss(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes("1girl, 长发".encode("gb18030"))
    cap = read_caption(p)
    assert cap.text == "1girl, 长发" and cap.encoding == "gb18030" and not cap.utf8
    p.write_bytes(b"\xef\xbb\xbfsolo\n")
    assert read_caption(p).text == "solo" and read_caption(p).encoding == "utf-8-sig"
    assert not read_caption(tmp_path / "none.txt").exists
    assert caption_path(tmp_path / "x.png") == tmp_path / "x.txt"
    assert caption_path(tmp_path / "x.png", "caption") == tmp_path / "x.caption"


def test_split_tags_keeps_commas_inside_brackets():
    assert split_tags("1girl,  solo, (red, blue:1.2), ,long hair") == ["1girl", "solo", "(red, blue:1.2)", "long hair"]


def test_backup_before_rewrite(tmp_path):
    a = tmp_path / "a.txt"
    write_caption(a, "old")
    backup = backup_captions(tmp_path, [a, tmp_path / "missing.txt"], label="remove")
    write_caption(a, "new")
    assert (backup / "a.txt").read_text() == "old" and a.read_text() == "new"
    assert backup.parent.name == ".kiln-caption-backups" and backup.name.endswith("-remove")
    assert backup_captions(tmp_path, [tmp_path / "missing.txt"]) is None
