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
    assert index.vectors.dtype == np.int8 and np.abs(index.vectors).max() <= 7  # 4-bit codes, one scale a block
    assert index.scales.shape == (len(index.replies), index.vectors.shape[1] // 32)
    assert all(keep_reply(r) for r in index.replies[:2000])


def test_personal_data_filter():
    assert not keep_reply("text me at 801 555 1234")
    assert not keep_reply("my email is bob@example.com")
    assert not keep_reply("see https://example.org")
    assert not keep_reply("ok")
    assert keep_reply("i have 2 dogs and 3 cats")


def test_a_4bit_index_round_trips_and_finds_what_the_int8_one_finds(encoder, tmp_path):
    replies = ["i love my dog", "pizza is my favorite food", "i study computer science", "my cat sleeps all day",
               "i play the guitar in a band", "we went hiking in the mountains"]
    vecs = encoder.embed(replies)
    meta = {"encoder_sha256": file_sha256(DEFAULT_ENCODER / "model.onnx")}
    codes, scales = ReplyIndex.quantize_4bit(vecs)
    assert codes.dtype == np.int8 and np.abs(codes).max() <= 7 and scales.shape == (len(replies), 384 // 32)
    ReplyIndex(codes, replies, meta, ReplyIndex.quantize(vecs[:2]), scales.astype(np.float32)).save(tmp_path / "q4")
    ReplyIndex(ReplyIndex.quantize(vecs), replies, meta).save(tmp_path / "q8")
    assert np.load(tmp_path / "q4" / "vectors4.npy").shape == (len(replies), 384 // 2)  # two codes a byte
    four = ReplyIndex.load(tmp_path / "q4", DEFAULT_ENCODER / "model.onnx")
    eight = ReplyIndex.load(tmp_path / "q8", DEFAULT_ENCODER / "model.onnx")
    np.testing.assert_array_equal(four.vectors, codes)
    queries = encoder.embed(["what food do you like best?", "do you have pets?", "what do you study?"])
    for q, found4, found8 in zip(queries, four.search_batch(queries, 2), eight.search_batch(queries, 2)):
        assert found4[0][0] == found8[0][0] and abs(found4[0][1] - found8[0][1]) < 0.05
        assert [t for t, _ in four.search(q, 2)] == [t for t, _ in found4]
    # one block's quantization error is at most half a step of its scale
    back = (codes.reshape(len(codes), -1, 32) * scales.astype(np.float32)[..., None]).reshape(vecs.shape)
    assert np.all(np.abs(back - vecs) <= np.repeat(scales.astype(np.float32), 32, axis=1) / 2 + 1e-3)


def test_filtering_an_index_keeps_each_reply_with_its_vector(encoder, tmp_path):
    from training.safe_data import filter_index

    replies = ["i love my dog", "text me at 801 555 1234", "pizza is my favorite food"]
    vecs = encoder.embed(replies)
    codes, scales = ReplyIndex.quantize_4bit(vecs)
    ReplyIndex(codes, replies, {"encoder_sha256": "x"}, None, scales.astype(np.float32)).save(tmp_path)
    assert filter_index(tmp_path)["after"] == 2
    index = ReplyIndex.read(tmp_path)
    assert index.replies == ["i love my dog", "pizza is my favorite food"]
    np.testing.assert_array_equal(index.vectors, codes[[0, 2]])
    np.testing.assert_array_equal(index.scales, scales[[0, 2]].astype(np.float32))
    assert index.meta["removed"]["personal"] == 1 and not (tmp_path / "vectors.npy").exists()
