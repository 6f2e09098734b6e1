"""A safetensors adapter whose header length happens to start with byte 0x80 (a pickle's first byte) still reads."""
from __future__ import annotations

import struct

import torch
from safetensors.torch import save_file

from reelora.models.adapters import check_safetensors_file, read_adapter


def test_header_length_with_low_byte_0x80_is_not_a_pickle(tmp_path):
    sd = {"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, 4),
          "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.zeros(4, 2)}
    for pad in range(300):  # metadata of growing length until the header length's low byte is 0x80
        path = tmp_path / "a.safetensors"
        save_file(sd, str(path), {"format": "pt", "reelora.note": "x" * pad})
        if path.read_bytes()[:1] == b"\x80":
            break
    assert path.read_bytes()[:1] == b"\x80" and struct.unpack("<Q", path.read_bytes()[:8])[0] % 256 == 0x80
    check_safetensors_file(path)
    assert set(read_adapter(path).state_dict) == set(sd)
