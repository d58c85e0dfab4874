"""Which LLM the agent talks to, decided from the environment and the `LLM=` switch of make.

`make run LLM=local` (`--llm local`): SmolLM2-135M on this machine, served by Ollama
(scripts/install-local-model.sh); `LLM=echo`: Dapr's own `conversation.echo`. Without
the switch, the environment decides: OPENAI_BASE_URL: any OpenAI-compatible server;
OPENAI_API_KEY: OpenAI; neither: echo, offline. The agent reaches each one through the
Conversation API and the component named `llm-provider`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tools.stack.processes import StackError
from tools.stack.settings import (
    LOCAL_MODEL_LABEL,
    LOCAL_MODEL_NAME,
    LOCAL_MODEL_URL,
    RESOURCES_DIR,
    STATE_DIR,
    local_model_installed,
)

# The values of make's LLM= switch (python -m tools.stack run/serve --llm ...); "" lets the environment decide.
SWITCHES = ("", "local", "echo")


@dataclass
class LLMChoice:
    name: str
    resources: Path  # the directory passed as --resources-path
    banner: str
    env: dict[str, str] = field(default_factory=dict)
    provider: str = ""  # the file of resources/llm/ that becomes llm-provider.yaml (default: <name>.yaml)


def describe_llm(env: dict[str, str], switch: str = "") -> LLMChoice:
    """The LLM that `switch` (make's LLM=) names, else the one the environment names: an
    OpenAI-compatible endpoint with a base URL; OpenAI with a key; Dapr's echo otherwise.

    Only decides; choose_llm() also lays out the resources folder it names.
    """
    if switch not in SWITCHES:
        raise StackError(f"LLM={switch} is not a choice: use LLM=local (a small model on this machine) "
                             "or LLM=echo (Dapr's echo), or leave it out to use OPENAI_BASE_URL / OPENAI_API_KEY")
    if switch == "local":
        # The same component as any OpenAI-compatible server: only the secrets it reads differ.
        extra = {"OPENAI_BASE_URL": LOCAL_MODEL_URL, "OPENAI_MODEL": LOCAL_MODEL_NAME, "OPENAI_API_KEY": "unused"}
        return LLMChoice("local", STATE_DIR / "resources-local",
                         f"LLM: {LOCAL_MODEL_LABEL} on this machine ({LOCAL_MODEL_URL}, "
                         "temperature 0: the same answer every time)", extra, provider="openai-compatible")
    if switch == "" and env.get("OPENAI_BASE_URL"):
        extra = {"OPENAI_MODEL": env.get("OPENAI_MODEL") or "gpt-4o-mini",
                 # conversation.openai refuses an empty key, even for a keyless local server.
                 "OPENAI_API_KEY": env.get("OPENAI_API_KEY") or "unused"}
        return LLMChoice("openai-compatible", STATE_DIR / "resources-openai-compatible",
                         f"LLM: OpenAI-compatible endpoint {env['OPENAI_BASE_URL']} "
                         f"(model {extra['OPENAI_MODEL']})", extra)
    if switch == "" and env.get("OPENAI_API_KEY"):
        return LLMChoice("openai", RESOURCES_DIR, "LLM: OpenAI (key from OPENAI_API_KEY, via the secret store)")
    return LLMChoice("echo", STATE_DIR / "resources-echo",
                     "LLM: none configured, so Dapr's conversation.echo answers: the agent ECHOES your "
                     "prompt back. For a real model: LLM=local (a small one on this machine, built once), "
                     "or set OPENAI_API_KEY (or OPENAI_BASE_URL).")


def choose_llm(env: dict[str, str], switch: str = "") -> LLMChoice:
    """describe_llm(), with its resources folder ready to pass to `dapr run`.

    `resources/` holds the OpenAI provider, so the README's plain
    `dapr run --resources-path ./resources` works with a key. For the other
    choices the same components are copied beside the matching provider from
    `resources/llm/` (Dapr allows one conversation component to be the
    default, so the others must not be loaded at all).
    """
    choice = describe_llm(env, switch)
    if choice.name == "local" and not local_model_installed():
        raise StackError("the local model is not set up yet: run `bash scripts/install-local-model.sh` "
                             "(`make run LLM=local` does it first; it builds Ollama once per machine)")
    if choice.resources != RESOURCES_DIR:
        provider = choice.provider or choice.name
        wanted = {source.name: source.read_bytes() for source in RESOURCES_DIR.glob("*.yaml")
                  if source.name != "llm-provider.yaml"}
        wanted["llm-provider.yaml"] = (RESOURCES_DIR / "llm" / f"{provider}.yaml").read_bytes()
        # Rewritten only when it differs: a running sidecar watches this folder (hot reload), and one that
        # finds it gone while a second replica starts exits ("failed to read resource directories").
        present = {path.name: path.read_bytes() for path in choice.resources.glob("*")} \
            if choice.resources.is_dir() else None
        if present != wanted:
            shutil.rmtree(choice.resources, ignore_errors=True)
            choice.resources.mkdir(parents=True)
            for name, content in wanted.items():
                (choice.resources / name).write_bytes(content)
    return choice
