"""Reading model files: safetensors, weights-only pickles, and clear errors for bad files."""

from __future__ import annotations

import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from core.errors import ModelFileError
from core.models.state_dict_io import read_safetensors_metadata, read_state_dict


class NotAWeight:
    """A pickled object that weights_only loading must refuse."""

    def __reduce__(self):
        return (print, ("this would run at load time",))


def test_safetensors_and_metadata(tmp_path):
    p = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(2, 3), "b": torch.arange(4)}, str(p), metadata={"ss_x": "1"})
    sd = read_state_dict(p)
    assert torch.equal(sd["a"], torch.ones(2, 3)) and sd["b"].dtype == torch.int64
    assert read_safetensors_metadata(p) == {"ss_x": "1"}


def test_pickle_unwraps_state_dict_and_keeps_tensors(tmp_path):
    p = tmp_path / "m.ckpt"
    torch.save({"state_dict": {"x.weight": torch.zeros(2)}, "global_step": 5, "epoch": 1}, p)
    assert list(read_state_dict(p)) == ["x.weight"]
    nested = tmp_path / "e.pt"
    torch.save({"string_to_param": {"*": torch.zeros(1, 8)}, "name": "tok", "step": 3}, nested)
    assert list(read_state_dict(nested)) == ["string_to_param.*"]


def test_pickle_needing_code_is_refused(tmp_path):
    p = tmp_path / "evil.ckpt"
    with open(p, "wb") as f:
        pickle.dump({"state_dict": {"w": NotAWeight()}}, f)
    with pytest.raises(ModelFileError, match="needs arbitrary code to unpickle") as info:
        read_state_dict(p)
    assert str(p) in str(info.value) and ".safetensors" in str(info.value)


def test_truncated_safetensors_names_the_file(tmp_path):
    p = tmp_path / "cut.safetensors"
    save_file({"a": torch.ones(1000)}, str(p))
    data = p.read_bytes()
    p.write_bytes(data[:-100])
    with pytest.raises(ModelFileError, match="truncated") as info:
        read_state_dict(p)
    assert str(p) in str(info.value)
    bad_header = tmp_path / "hdr.safetensors"
    bad_header.write_bytes(struct.pack("<Q", 10**6) + b"{}")
    with pytest.raises(ModelFileError, match="header says"):
        read_safetensors_metadata(bad_header)
    garbage = tmp_path / "junk.safetensors"
    garbage.write_bytes(struct.pack("<Q", 4) + b"nope")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        read_state_dict(garbage)


@pytest.mark.parametrize("name", ["empty.safetensors", "empty.ckpt"])
def test_empty_file(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty"):
        read_state_dict(p)


def test_corrupt_pickle_and_unknown_suffix(tmp_path):
    p = tmp_path / "bad.pt"
    p.write_bytes(b"\x80\x02garbage that is not a pickle")
    with pytest.raises(ModelFileError) as info:
        read_state_dict(p)
    assert str(p) in str(info.value)
    other = tmp_path / "model.gguf"
    other.write_bytes(b"x")
    with pytest.raises(ModelFileError, match="unknown model file type"):
        read_state_dict(other)
