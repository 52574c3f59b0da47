"""Dataset › Folders & checks › Make demo dataset: the handler writes the demo, in the browser's language."""

from types import SimpleNamespace

import pytest

from core.errors import KilnError
from ui.dataset import folders


def request(language: str):
    return SimpleNamespace(headers={"accept-language": language})


def test_demo_button_writes_the_dataset_and_fills_the_pictures_folder(tmp_path):
    message, source = folders.demo_view(f"  {tmp_path / 'demo'}  ", request("en"))
    assert source == str(tmp_path / "demo")
    assert (tmp_path / "demo" / "a.jpg").is_file() and (tmp_path / "demo" / "small.png").is_file()
    assert message.startswith("20 pictures of the new concept “orange”")


def test_demo_button_speaks_chinese_and_never_overwrites(tmp_path):
    folders.demo_view(str(tmp_path / "demo"), request("en"))
    before = {p.name: p.read_bytes() for p in (tmp_path / "demo").iterdir()}
    with pytest.raises(KilnError, match="already there"):
        folders.demo_view(str(tmp_path / "demo"), request("zh-CN"))
    assert {p.name: p.read_bytes() for p in (tmp_path / "demo").iterdir()} == before
    message, _ = folders.demo_view(str(tmp_path / "zh"), request("zh-CN,zh;q=0.9"))
    assert "新概念“orange”" in message and "未打标" in message
    with pytest.raises(KilnError, match="请填写示例数据集的目录"):
        folders.demo_view("  ", request("zh-CN"))
