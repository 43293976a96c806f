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
