"""4-bit block quantization, one layout for every 4-bit array Rapport stores (the reply index, token tables
read by onnxruntime's ``GatherBlockQuantized``): symmetric codes -7..7 with an fp16 scale per block of
BLOCK values (the block's largest magnitude / 7), stored +8 in unsigned nibbles, two a byte, low nibble first."""
from __future__ import annotations

import numpy as np

BLOCK = 32
LEVELS = 7


def quantize_4bit(values: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) float -> int8 codes -7..7 (rows, cols) and fp16 scales (rows, cols // block)."""
    blocks = values.reshape(len(values), -1, block)
    scales = (np.abs(blocks).max(axis=2) / LEVELS).astype(np.float16)
    safe = np.where(scales == 0, 1, scales).astype(np.float32)[..., None]
    return np.clip(np.round(blocks / safe), -LEVELS, LEVELS).astype(np.int8).reshape(values.shape), scales


def dequantize_4bit(codes: np.ndarray, scales: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """float32 values of int8 ``codes`` with their blocks' ``scales``."""
    return (codes.reshape(len(codes), -1, block) * scales.astype(np.float32)[..., None]).reshape(codes.shape)


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """int8 codes -7..7, (n, 2k) -> uint8 (n, k): code + 8, two a byte, low nibble first."""
    u = (codes.astype(np.int16) + 8).astype(np.uint8)
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_nibbles(packed: np.ndarray) -> np.ndarray:
    """:func:`pack_nibbles` undone: int8 codes (n, 2k)."""
    codes = np.empty((packed.shape[0], packed.shape[1] * 2), dtype=np.int8)
    codes[:, 0::2] = (packed & 0x0F).astype(np.int8) - 8
    codes[:, 1::2] = (packed >> 4).astype(np.int8) - 8
    return codes
