"""Training tools: fp16 weight shards, int8 quantization of embedding tables, ranker and hybrid helpers."""
import numpy as np
import pytest

from engine.model.replier import CandidateFeatures, RankWeights

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")


@pytest.mark.slow  # packs a full-size model
def test_chat_shards_round_trip(tmp_path):
    """Only trained weights travel, each shard under 15 MiB; unpacking rebuilds the trained model."""
    from training.modeling import build_model, freeze_embeddings
    from training.shards import SHARD_BYTES, pack_chat, unpack_chat
    from training.export import load_checkpoint
    model = build_model(warm_start=True)
    freeze_embeddings(model)
    with torch.no_grad():
        model.model.shared.weight.copy_(model.model.shared.weight.half().float())  # as trained from fp16 MiniLM
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    torch.save({"model": model.state_dict(), "state": {"examples": 1}, "config": model.config.to_dict(),
                "frozen_embeddings": True}, tmp_path / "best.pt")
    paths = pack_chat(tmp_path / "best.pt", tmp_path / "shards")
    assert all(p.stat().st_size <= SHARD_BYTES + 100_000 for p in paths)
    assert sum(p.stat().st_size for p in paths) < 55e6  # the 47 MB embedding table stays behind
    unpack_chat(tmp_path / "shards", tmp_path / "out.pt")
    back = load_checkpoint(tmp_path / "out.pt")
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4), name
    assert torch.equal(back.model.shared.weight, model.model.shared.weight)


@pytest.mark.slow  # packs a full-size model twice
def test_continued_training_round_trip(tmp_path):
    """pack-init sends a checkpoint with untied tables (int8 rows) and the rest (fp16) under 15 MiB a shard;
    unpack-init rebuilds it without tying the tables; the trained weights come back onto that base."""
    from transformers import BartForConditionalGeneration
    from training.export import load_checkpoint
    from training.modeling import bart_config, freeze_embeddings
    from training.shards import (CHAT_FROZEN, SHARD_BYTES, pack_chat, pack_init, round_int8_rows, unpack_chat,
                                 unpack_init)
    config = bart_config()
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    base = BartForConditionalGeneration(config)
    with torch.no_grad():
        for table in (base.model.encoder.embed_tokens, base.model.decoder.embed_tokens, base.lm_head):
            table.weight.add_(0.01 * torch.randn_like(table.weight))  # four different tables, as trained here
    torch.save({"model": base.state_dict(), "state": {"examples": 5}, "config": base.config.to_dict()},
               tmp_path / "base.pt")
    paths = pack_init(tmp_path / "base.pt", tmp_path / "init")
    assert all(p.stat().st_size <= SHARD_BYTES + 100_000 for p in paths)
    assert sum(p.stat().st_size for p in paths) < 105e6  # 4 tables x 11.7 MB as int8 rows + 50 MB fp16
    unpack_init(tmp_path / "init", tmp_path / "hf")
    sent = BartForConditionalGeneration.from_pretrained(tmp_path / "hf")
    for name, weight in base.state_dict().items():
        want = round_int8_rows(weight) if name in CHAT_FROZEN else weight.half().float()
        assert torch.equal(sent.state_dict()[name], want), name
    freeze_embeddings(sent)
    with torch.no_grad():
        for p in sent.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    torch.save({"model": sent.state_dict(), "state": {"examples": 9}, "config": sent.config.to_dict(),
                "frozen_embeddings": True, "budget": {"max_source_tokens": 192, "max_facts_tokens": 64},
                "persona_data": True}, tmp_path / "trained.pt")
    shards = pack_chat(tmp_path / "trained.pt", tmp_path / "back")
    assert sum(p.stat().st_size for p in shards) < 55e6  # the frozen tables stay behind
    unpack_chat(tmp_path / "back", tmp_path / "out.pt", base=tmp_path / "base.pt")
    back = load_checkpoint(tmp_path / "out.pt")
    unpacked = torch.load(tmp_path / "out.pt", weights_only=False)
    assert unpacked["budget"]["max_facts_tokens"] == 64 and unpacked["persona_data"]  # export reads these
    for name, weight in sent.state_dict().items():
        assert torch.allclose(back.state_dict()[name], weight, rtol=1e-3, atol=1e-4), name


def test_pack_chat_refuses_trained_embeddings(tmp_path):
    from training.shards import pack_chat
    torch.save({"model": {}, "state": {}, "config": {}}, tmp_path / "best.pt")
    with pytest.raises(ValueError, match="freeze-embeddings"):
        pack_chat(tmp_path / "best.pt", tmp_path / "shards")


def test_embedding_rows_int8_keep_every_row(tmp_path):
    """A Gather over a table rewritten to int8 rows + per-row scales returns each row within 1/254 of
    its largest value, also for rows far smaller than the table's largest (per-tensor int8 fails there)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from training.onnx_quantize import quantize_embedding_rows
    rng = np.random.default_rng(0)
    table = rng.normal(size=(2000, 600)).astype(np.float32) * rng.uniform(0.001, 10, size=(2000, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["out"], axis=0)], "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 600])],
        [numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert quantize_embedding_rows(model) == 1
    onnx.save(model, str(tmp_path / "m.onnx"))
    ids = np.arange(2000, dtype=np.int64)
    got = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    err = np.abs(got - table).max(1) / np.abs(table).max(1)
    assert err.max() <= 1 / 254 + 1e-6
    assert (tmp_path / "m.onnx").stat().st_size < table.nbytes / 3


def test_ranker_freezes_all_but_the_top_layers():
    from transformers import BertConfig, BertModel
    from training.ranker import freeze_lower
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64))
    prefixes = freeze_lower(model, 2)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert prefixes == ["encoder.layer.2.", "encoder.layer.3."]
    assert trained and all(n.startswith(("encoder.layer.2.", "encoder.layer.3.")) for n in trained)
    assert not any("embeddings" in n for n in trained)


def test_ranker_valid_sets_are_fixed_and_fair():
    from training.data import Example
    from training.ranker import pairs_of, ranking_sets
    exs = [Example(f"c{i}", 1, "a", "b", (f"context {i}",), f"reply {i % 7}") for i in range(50)]
    exs.append(Example("c50", 0, "a", "b", (), "an opening has no context"))
    pairs = pairs_of(exs)
    assert len(pairs) == 50
    sets = ranking_sets(pairs, 10)
    assert sets == ranking_sets(pairs, 10) and sets != ranking_sets(pairs, 10, seed=1)
    for conv, context, options in sets:
        i = int(context.split()[-1])
        assert conv == f"c{i}"
        assert len(options) == 20 and options[0] == f"reply {i % 7}" and options[0] not in options[1:]


def test_ranker_epoch_batches_keep_each_corpus_apart():
    from training.ranker import epoch_batches
    parts = [(0, 40, 40), (40, 1000, 24)]  # all 40 chit-chat pairs, 24 of the 1,000 persona pairs
    batches = epoch_batches(parts, 8, seed=3)
    assert batches == epoch_batches(parts, 8, seed=3) and batches != epoch_batches(parts, 8, seed=4)
    assert len(batches) == 8 and all(len(b) == 8 for b in batches)
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == 64 and set(range(40)) <= set(flat)
    assert all(max(b) < 40 or min(b) >= 40 for b in batches)


def test_ranker_persona_pairs_leave_out_template_slots():
    from training.persona import PersonaConversation
    from training.ranker import persona_pairs
    conv = PersonaConversation("p1", (("i have a dog",), ("i am a nurse",)), 1,
                               ("hi there", "hello, i'm [name]. what do you do?", "i walk my dog. you?", "i work nights"))
    pairs = persona_pairs([conv])
    assert pairs == [("p1", "hi there hello, i'm [name]. what do you do?", "i walk my dog. you?"),
                     ("p1", "hello, i'm [name]. what do you do? i walk my dog. you?", "i work nights")]


def _pool(i):
    from training.reply_choice import Pool
    texts = [f"i like cats {i}", "i do not know", f"dogs are great {i}"]
    arr = lambda *v: np.array(v, np.float32)  # noqa: E731
    f = CandidateFeatures(texts, ranker=arr(0.2, 0.9, 0.5), generator=arr(-0.5, -1.0, -2.0), profile=arr(0, 0, 0),
                          echo=arr(0, 0, 0), prior=arr(-4.0, -0.8, -3.0), hub=arr(0.1, 0.8, 0.2))
    return Pool(f, np.array([True, False, True]), greedy="i do not know", true_reply=f"i like cats {i}", group=str(i))


def test_reply_choice_terms_against_bland_replies_and_tuning():
    from training.reply_choice import GRID, pick, pick_generator_only, top10_share, tune
    pools = [_pool(i) for i in range(20)]
    assert pick_generator_only(pools[0]) == "i like cats 0"
    assert pick(pools[0], RankWeights(generator=0.0)) == "i do not know"  # the generic reply sits close to everything
    assert pick(pools[0], RankWeights(generator=0.0, hubness=1.0)) == "dogs are great 0"  # ... hubness corrects that
    assert pick(pools[0], RankWeights(generator=1.0, mmi=0.1)) == "i like cats 0"  # ... and so does MMI
    weights, table = tune({"a": pools[:10], "b": pools[10:]}, RankWeights())
    assert pick(pools[0], weights) == "i like cats 0"
    assert table[0]["setting"] == "greedy" and table[0]["f1_a"] == 25.0  # "i" in common
    assert len(table) == 1 + np.prod([len(v) for v in GRID.values()])
    assert top10_share(["a"] * 5 + [str(i) for i in range(95)]) == 0.14


@pytest.mark.slow
def test_dequantized_model_computes_what_the_int8_export_computes():
    """The rebuilt fp32 BART (benchmarks' shared weights) matches the shipped int8 ONNX up to int8 compute."""
    from engine.config import DEFAULT_MODEL
    from engine.model.seq2seq import Seq2SeqModel
    from training.dequantize import dequantize_matmul_nbits, rebuild
    q = np.array([[[128, 130, 126, 255]]], dtype=np.uint8)
    assert dequantize_matmul_nbits(q, np.array([[0.5]], dtype=np.float32), 3, 8).tolist() == [[0.0, 1.0, -1.0]]
    model = rebuild(DEFAULT_MODEL)
    onnx_model = Seq2SeqModel.from_dir(DEFAULT_MODEL)
    ids = np.asarray([[101, 7632, 1010, 2129, 2024, 2017, 2651, 1029, 102]])
    mask = np.ones_like(ids)
    dec = np.asarray([[101, 1045, 2572]])
    hidden = onnx_model.encode(ids, mask)
    want = onnx_model.decoder.run(None, onnx_model._feed(onnx_model.decoder, dec, hidden, mask, {}, False))[0]
    with torch.no_grad():
        got = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    decoder_input_ids=torch.tensor(dec)).logits.numpy()
    assert np.abs(got - want).max() < 0.5
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_dequantized_ranker_computes_what_the_int8_encoder_computes(tmp_path):
    """The shipped ranker rebuilt in fp32 (where ranker training continues) embeds like its int8 export:
    int8 activations cost ~0.01 cosine on any CPU (export_report.json: 0.99 mean), while the pretrained
    MiniLM it was fine-tuned from is 0.15-0.45 away on these texts."""
    from tokenizers import Tokenizer
    from transformers import AutoModel
    from engine.config import DEFAULT_ENCODER
    from engine.model.encoder import SentenceEncoder
    from training.dequantize_encoder import rebuild
    from training.modeling import minilm_dir
    from training.ranker import embed
    assert rebuild(DEFAULT_ENCODER, tmp_path) == 101  # 36 linear weights, 3 tables, 62 biases and norms
    texts = ["i love my dog, he is a golden retriever", "what do you do for work?", "hi how are you",
             "i work as a nurse at night"]
    want = SentenceEncoder.from_dir(DEFAULT_ENCODER).embed(texts)
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    tok.no_padding()

    def vectors(folder) -> np.ndarray:  # the training code's own pooling (train-ranker's embed)
        with torch.no_grad():
            return embed(AutoModel.from_pretrained(str(folder)).eval(), [e.ids for e in tok.encode_batch(texts)],
                         "cpu").numpy()

    rebuilt = (vectors(tmp_path) * want).sum(1)
    pretrained = (vectors(minilm_dir()) * want).sum(1)
    assert rebuilt.min() > 0.95 and rebuilt.mean() > 0.97
    assert (rebuilt - pretrained).min() > 0.1


def test_ranker_eval_scores_sets_and_pairs_the_difference():
    from engine.config import DEFAULT_ENCODER
    from engine.model.encoder import SentenceEncoder
    from training.ranker_eval import compare, set_hits
    off_topic = ["the stock market fell today", "paint the fence blue", "the train leaves at noon",
                 "my printer is out of ink", "tax forms are due in april"] * 4
    sets = [("c1", "i just got a puppy! what should i name him?", ["congrats! how about max? puppies are so fun"]
             + off_topic[:19]),
            ("c2", "what is your favorite food?", ["i love pizza, especially with mushrooms"] + off_topic[1:20]),
            ("c3", "the stock market fell today", ["hello there"] + ["the stock market fell today"] + off_topic[:18])]
    encoder = SentenceEncoder.from_dir(DEFAULT_ENCODER)
    assert set_hits(encoder, sets).tolist() == [1.0, 1.0, 0.0]  # the third set's truth loses to an echo
    report = compare(encoder, encoder, {"toy": sets})["toy"]
    assert report["candidate_minus_baseline"] == {"value": 0.0, "low": 0.0, "high": 0.0}
    assert abs(report["baseline"]["value"] - 2 / 3) < 1e-9 and report["sets"] == 3
