"""rapport-train distill: the teacher's reply to every bot turn of a window, from one prompt pass, is the
reply the model would write from that turn's own prompt."""
import pytest

from engine.model.prompt import Turn

from .conftest import FIXTURES

torch = pytest.importorskip("torch")


def test_each_bot_turns_reply_is_the_greedy_reply_to_its_own_prompt():
    from tokenizers import Tokenizer

    from training.distill import Teacher, bot_turn_starts
    from training.fixtures import tiny_llama

    tokenizer = FIXTURES / "tiny-llama-chat" / "tokenizer.json"
    end = Tokenizer.from_file(str(tokenizer)).token_to_id("<|im_end|>")
    model = tiny_llama(49152, 16, eos=end)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)  # replies that differ from turn to turn
    teacher = Teacher(model, tokenizer, bf16=False, max_tokens=120)
    turns = [Turn(f"turn {i} " + "some words " * (i % 3 + 1), i % 2 == 0) for i in range(12)]
    windows = teacher.enc.windows(["i like jazz"], ["my name is ana"], turns)
    starts = [bot_turn_starts(teacher, w.ids, w.target) for w in windows]
    assert len(windows) > 1 and sum(map(len, starts)) == 6  # every bot turn once
    got = teacher.replies([w.ids for w in windows], starts)
    for window, ss, texts in zip(windows, starts, got):
        for s, text in zip(ss, texts):
            out = model.generate(torch.tensor([window.ids[:s]]), max_new_tokens=48, do_sample=False,
                                 eos_token_id=end, pad_token_id=end)[0, s:].tolist()
            assert teacher.enc.decode([t for t in out if t != end]) == text
    assert len({t for texts in got for t in texts}) > 1


def test_sides_keep_the_mix_in_every_prefix():
    from training.data import Conversation
    from training.distill import side_key, sides
    from training.persona import PersonaConversation

    persona = [PersonaConversation(f"p{i}", (("i like jazz",), ("i am ana",)), 1, ("hi", "hello", "how are you?"))
               for i in range(70)]
    chat = [Conversation(f"c{i}", "", ["a", "b"], ["hi", "yo", "sup"]) for i in range(30)]
    order = sides(persona, chat, {}, seed=0, persona_share=0.7)
    assert len(order) == 200 and len({side_key(s) for s in order}) == 200
    for n in (10, 50, 100):
        share = sum(s["source"] == "persona" for s in order[:n]) / n
        assert abs(share - 0.7) <= 0.1


def test_hedges_and_repeated_words_are_not_imitated():
    from training.distill import worth_imitating

    assert worth_imitating("I love jazz, mostly Coltrane.")
    for reply in ("I'm not sure I'm a runner but I'm a pretty good runner", "i don't know.", "I'm a chat bot bot.",
                  "  "):
        assert not worth_imitating(reply)
    assert worth_imitating("Not sure yet, but I think so.")  # a hedge that still takes a side is kept


def test_the_student_trains_on_the_teachers_replies_with_the_facts_it_read(tmp_path, monkeypatch):
    import json

    from engine.model.text import TextCodec
    from training import train
    from training.distill import distilled_examples
    from training.examples import ExampleEncoder
    from training.modeling import minilm_dir

    side = {"source": "persona", "conv_id": "c1", "bot": 2, "bot_facts": ["i play the drums"],
            "user_facts": ["i have a collie"],
            "turns": [["Hi there!", True], ["Hello!", False], ["Do you play music?", True], ["Yes, drums.", False],
                      ["Do you sing?", True], ["No.", False]],
            "replies": {"1": "hey! how are you?", "3": "i play the drums in a band.", "5": "I'm not sure I do."}}
    opener = {**side, "conv_id": "c2", "turns": [["Hi!", False], ["Hello", True]], "replies": {"0": "hi, i'm new here"}}
    path = tmp_path / "distilled.jsonl"
    path.write_text(json.dumps(side) + "\n" + json.dumps(opener) + "\n")
    examples = distilled_examples(path)
    assert [(ex.context, ex.reply) for ex in examples] == [
        (("Hi there!",), "hey! how are you?"),
        (("Hi there!", "Hello!", "Do you play music?"), "i play the drums in a band.")]  # the bot's opener is left out
    assert examples[1].bot_facts == ("i play the drums",) and examples[1].user_facts == ("i have a collie",)
    codec = TextCodec.from_file(minilm_dir() / "tokenizer.json")
    for name, value in (("_worker_encoder", ExampleEncoder(codec, {})), ("_worker_splits", {"train": []}),
                        ("_worker_persona", []), ("_worker_distilled", examples)):
        monkeypatch.setattr(train, name, value)  # what the epoch helper process holds
    epoch = train._encode_epoch(0, 0, drop=0.4, persona_share=0.0, distilled_share=1.0)
    assert sorted(codec.decode(e.target[:-1]) for e in epoch) == ["hey! how are you?", "i play the drums in a band."]
    drums = next(e for e in epoch if codec.decode(e.target[:-1]).startswith("i play"))
    assert "drums" in codec.decode(drums.source) and "collie" in codec.decode(drums.source)  # facts never dropped
    again = train._encode_epoch(0, 0, drop=0.4, persona_share=0.0, distilled_share=1.0)  # seeded
    assert [e.source for e in again] == [e.source for e in epoch]


def test_a_small_distilled_file_keeps_its_share_of_the_epoch(monkeypatch):
    """With fewer teacher replies than half a whole epoch, the real examples are subsampled so that the teacher's
    still make up ``--distilled-share`` of what the student sees (a capped share would drown them: 8,000
    teacher replies against 461,461 real examples would be 1.7%)."""
    from engine.model.text import TextCodec
    from training import train
    from training.data import Conversation
    from training.examples import ExampleEncoder
    from training.modeling import minilm_dir
    from training.persona import PersonaExample

    codec = TextCodec.from_file(minilm_dir() / "tokenizer.json")
    chat = [Conversation(f"c{k}", "", ["a", "b"], [f"turn {k} {t}" for t in range(11)]) for k in range(40)]  # 400 examples
    taught = [PersonaExample(f"d{k}", 1, ("hello",), f"teacher reply {k}", (), ()) for k in range(60)]
    for name, value in (("_worker_encoder", ExampleEncoder(codec, {})), ("_worker_splits", {"train": chat}),
                        ("_worker_persona", []), ("_worker_distilled", taught)):
        monkeypatch.setattr(train, name, value)
    for share in (0.5, 0.25):
        epoch = train._encode_epoch(0, 0, drop=0.4, persona_share=0.0, distilled_share=share)
        teacher = sum(codec.decode(e.target[:-1]).startswith("teacher reply") for e in epoch)
        assert teacher == 60 and abs(teacher / len(epoch) - share) < 0.01
    whole = train._encode_epoch(0, 0, drop=0.4, persona_share=0.0, distilled_share=0.1)  # enough: nothing cut
    assert len(whole) - sum(codec.decode(e.target[:-1]).startswith("teacher reply") for e in whole) == 400
