"""Makes tiny Llama/Mistral models, SentencePiece tokenizers and peft LoRA adapters offline, for tests and the demo."""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneops.workers.corpus import corpus_lines

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of a tiny causal LM; hidden and intermediate sizes are multiples of 256 so K-quants apply."""

    family: str = "llama"  # llama | mistral
    vocab_size: int = 512
    hidden_size: int = 256
    intermediate_size: int = 512
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 2048
    dtype: str = "float32"
    max_shard_size: str = "1MB"
    seed: int = 0
    train_steps: int = 0  # a few steps of next-token training make perplexity meaningful
    tokenizer: bool = True  # False: no tokenizer files (synthetic benchmark models)


@dataclass(frozen=True)
class TinyAdapterSpec:
    """A peft LoRA adapter with non-zero B (peft initialises B to zero, which would make a merge a no-op)."""

    r: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    use_rslora: bool = False
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, int] = field(default_factory=dict)
    modules_to_save: tuple[str, ...] = ()
    use_dora: bool = False
    b_std: float = 0.05
    seed: int = 1
    base_model_name: str | None = None  # recorded as base_model_name_or_path; default: the base dir


def make_tokenizer(out_dir: Path, vocab_size: int = 512) -> Path:
    """Trains a SentencePiece BPE tokenizer (byte fallback) and writes transformers' tokenizer files."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    (out_dir / "tokenizer.model").write_bytes(buf.getvalue())
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "</s>",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>"}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    tok = AutoTokenizer.from_pretrained(str(out_dir), trust_remote_code=False)
    if len(tok) != vocab_size:
        raise RuntimeError(f"tokenizer has {len(tok)} tokens, expected {vocab_size}")
    # Also writes tokenizer.json so fast loaders (vLLM) need no conversion; tokenizer.model stays for GGUF.
    tok.save_pretrained(str(out_dir))
    if not (out_dir / "tokenizer.model").exists():
        (out_dir / "tokenizer.model").write_bytes(buf.getvalue())
    return out_dir


def _config(spec: TinyModelSpec) -> Any:
    from transformers import LlamaConfig, MistralConfig

    common: dict[str, Any] = {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
        "dtype": spec.dtype,
    }
    if spec.family == "llama":
        return LlamaConfig(**common)
    if spec.family == "mistral":
        return MistralConfig(sliding_window=None, **common)
    raise ValueError(f"unknown family {spec.family!r} (llama or mistral)")


def _train(model: Any, tok_dir: Path, steps: int, seed: int) -> None:
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir), trust_remote_code=False)
    ids = tok("\n".join(corpus_lines()), return_tensors="pt")["input_ids"][0]
    seq, batch = 64, 8
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - seq - 1, (batch,), generator=gen)
        x = torch.stack([ids[s : s + seq] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def make_model(out_dir: Path, spec: TinyModelSpec | None = None) -> Path:
    """Writes a random (optionally briefly trained) model as sharded safetensors plus its tokenizer."""
    import torch
    import transformers

    tf: Any = transformers  # untyped calls: keep mypy --strict quiet at one place
    spec = spec or TinyModelSpec()
    out_dir.mkdir(parents=True, exist_ok=True)
    if spec.tokenizer:
        make_tokenizer(out_dir, spec.vocab_size)
    torch.manual_seed(spec.seed)
    config = _config(spec)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if spec.train_steps > 0:
        if not spec.tokenizer:
            raise ValueError("train_steps needs a tokenizer")
        _train(model, out_dir, spec.train_steps, spec.seed)
    model = model.to(getattr(torch, spec.dtype))
    model.generation_config = tf.GenerationConfig(bos_token_id=1, eos_token_id=2, do_sample=False)
    model.save_pretrained(str(out_dir), max_shard_size=spec.max_shard_size)
    (out_dir / "tuneops-tiny.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return out_dir


def make_adapter(base_dir: Path, out_dir: Path, spec: TinyAdapterSpec | None = None) -> Path:
    """Writes a peft LoRA adapter for base_dir whose B matrices (and saved modules) differ from the base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    spec = spec or TinyAdapterSpec()
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32, trust_remote_code=False)
    cfg = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        target_modules=list(spec.target_modules),
        use_rslora=spec.use_rslora,
        rank_pattern=dict(spec.rank_pattern),
        alpha_pattern=dict(spec.alpha_pattern),
        modules_to_save=list(spec.modules_to_save) or None,
        use_dora=spec.use_dora,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, cfg)
    gen = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * spec.b_std)
            elif "modules_to_save" in name:
                param.add_(torch.randn(param.shape, generator=gen) * 0.02)
            elif "lora_magnitude_vector" in name:
                param.mul_(1.0 + torch.randn(param.shape, generator=gen) * 0.05)
    model.peft_config["default"].base_model_name_or_path = spec.base_model_name or str(base_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    return out_dir


def param_count(spec: TinyModelSpec) -> int:
    """Parameter count of a spec without building it (used to size benchmark models)."""
    head_dim = spec.hidden_size // spec.num_heads
    attn = 2 * spec.hidden_size * spec.hidden_size + 2 * spec.hidden_size * spec.num_kv_heads * head_dim
    mlp = 3 * spec.hidden_size * spec.intermediate_size
    per_layer = attn + mlp + 2 * spec.hidden_size
    return spec.num_layers * per_layer + 2 * spec.vocab_size * spec.hidden_size + spec.hidden_size


def _parse_pattern(items: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key or not value:
            raise SystemExit(f"pattern entries look like module=value, got {item!r}")
        out[key] = int(value)
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m tuneops.workers.tiny model DIR` / `adapter BASE DIR`: make demo and test artifacts."""
    p = argparse.ArgumentParser(prog="tuneops-tiny", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("model", help="a tiny base model with tokenizer")
    m.add_argument("output", type=Path)
    m.add_argument("--family", choices=["llama", "mistral"], default="llama")
    m.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    m.add_argument("--vocab-size", type=int, default=512)
    m.add_argument("--hidden-size", type=int, default=256)
    m.add_argument("--intermediate-size", type=int, default=512)
    m.add_argument("--layers", type=int, default=2)
    m.add_argument("--train-steps", type=int, default=0)
    m.add_argument("--seed", type=int, default=0)
    a = sub.add_parser("adapter", help="a LoRA adapter with non-zero B for a base model")
    a.add_argument("base", type=Path)
    a.add_argument("output", type=Path)
    a.add_argument("--rank", type=int, default=8)
    a.add_argument("--alpha", type=int, default=16)
    a.add_argument("--target", action="append", default=None, help="target module (repeatable)")
    a.add_argument("--rslora", action="store_true")
    a.add_argument("--rank-pattern", action="append", default=[], metavar="MODULE=R")
    a.add_argument("--alpha-pattern", action="append", default=[], metavar="MODULE=A")
    a.add_argument("--modules-to-save", action="append", default=[])
    a.add_argument("--base-model-name", default=None)
    a.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if args.cmd == "model":
        spec = TinyModelSpec(
            family=args.family,
            dtype=args.dtype,
            vocab_size=args.vocab_size,
            hidden_size=args.hidden_size,
            intermediate_size=args.intermediate_size,
            num_layers=args.layers,
            train_steps=args.train_steps,
            seed=args.seed,
        )
        make_model(args.output, spec)
    else:
        aspec = TinyAdapterSpec(
            r=args.rank,
            alpha=args.alpha,
            target_modules=tuple(args.target or DEFAULT_TARGETS),
            use_rslora=args.rslora,
            rank_pattern=_parse_pattern(args.rank_pattern),
            alpha_pattern=_parse_pattern(args.alpha_pattern),
            modules_to_save=tuple(args.modules_to_save),
            base_model_name=args.base_model_name,
            seed=args.seed,
        )
        make_adapter(args.base, args.output, aspec)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
