"""Every refusal the operator makes, in one place: the operator's reconcilers, `tuneops validate` and `tuneops render`
call these same functions, so what the operator would refuse, `validate` refuses first.

- `messages`: schema errors (pydantic) in words a person can act on.
- `policy`: what a spec may choose for its Pods under the operator config (images, ServiceAccounts, env, Secrets,
  server flags through `args`), and where its credentials may come from (`credentials`).
- `references`: references between resources, routing defaults, a quantization source.
- `serving`: what vLLM or llama.cpp would refuse at start or load time (parallelism, adapters).
- `quantization`: what a quantization step would refuse.

The package imports nothing at its top level, so the API layer can use `messages` without a cycle.
"""
