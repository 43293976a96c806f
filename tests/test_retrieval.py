"""The reply index: exact search, personal-data filter, and refusal of a mismatched encoder."""
import numpy as np
import pytest

from engine.config import DEFAULT_ENCODER, DEFAULT_INDEX
from engine.model.encoder import SentenceEncoder
from engine.model.retrieval import IndexMismatch, ReplyIndex, file_sha256
from training.build_index import keep_reply


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder.from_dir(DEFAULT_ENCODER)


def test_search_finds_the_nearest(encoder, tmp_path):
    replies = ["i love my dog", "pizza is my favorite food", "i study computer science"]
    meta = {"encoder_sha256": file_sha256(DEFAULT_ENCODER / "model.onnx")}
    ReplyIndex(ReplyIndex.quantize(encoder.embed(replies)), replies, meta).save(tmp_path)
    index = ReplyIndex.load(tmp_path, DEFAULT_ENCODER / "model.onnx")
    hits = index.search(encoder.embed(["what food do you like best?"])[0], 2)
    assert hits[0][0] == "pizza is my favorite food" and hits[0][1] > hits[1][1]


def test_mismatched_encoder_is_refused(encoder, tmp_path):
    ReplyIndex(np.zeros((1, 384), np.int8), ["x"], {"encoder_sha256": "0" * 64}).save(tmp_path)
    with pytest.raises(IndexMismatch, match="rebuild it"):
        ReplyIndex.load(tmp_path, DEFAULT_ENCODER / "model.onnx")


def test_shipped_index_matches_shipped_encoder():
    index = ReplyIndex.load(DEFAULT_INDEX, DEFAULT_ENCODER / "model.onnx")
    assert len(index.replies) == index.vectors.shape[0] >= 10000
    assert index.vectors.dtype == np.int8
    assert all(keep_reply(r) for r in index.replies[:2000])


def test_personal_data_filter():
    assert not keep_reply("text me at 801 555 1234")
    assert not keep_reply("my email is bob@example.com")
    assert not keep_reply("see https://example.org")
    assert not keep_reply("ok")
    assert keep_reply("i have 2 dogs and 3 cats")
