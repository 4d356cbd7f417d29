"""Local model servers (vLLM, llama.cpp's llama-server) run as subprocesses on 127.0.0.1."""
