"""Which LLM the agent talks to, decided from the environment.

OPENAI_BASE_URL: any OpenAI-compatible server; OPENAI_API_KEY: OpenAI; neither:
Dapr's own `conversation.echo`, offline. The agent reaches each one through the
Conversation API and the component named `llm-provider`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tools.stack.settings import RESOURCES_DIR, STATE_DIR


@dataclass
class LLMChoice:
    name: str
    resources: Path  # the directory passed as --resources-path
    banner: str
    env: dict[str, str] = field(default_factory=dict)


def describe_llm(env: dict[str, str]) -> LLMChoice:
    """OpenAI with a key; an OpenAI-compatible endpoint with a base URL; Dapr's echo otherwise.

    Only decides; choose_llm() also lays out the resources folder it names.
    """
    if env.get("OPENAI_BASE_URL"):
        extra = {"OPENAI_MODEL": env.get("OPENAI_MODEL") or "gpt-4o-mini",
                 # conversation.openai refuses an empty key, even for a keyless local server.
                 "OPENAI_API_KEY": env.get("OPENAI_API_KEY") or "unused"}
        return LLMChoice("openai-compatible", STATE_DIR / "resources-openai-compatible",
                         f"LLM: OpenAI-compatible endpoint {env['OPENAI_BASE_URL']} "
                         f"(model {extra['OPENAI_MODEL']})", extra)
    if env.get("OPENAI_API_KEY"):
        return LLMChoice("openai", RESOURCES_DIR, "LLM: OpenAI (key from OPENAI_API_KEY, via the secret store)")
    return LLMChoice("echo", STATE_DIR / "resources-echo",
                     "LLM: none configured, so Dapr's conversation.echo answers: the agent ECHOES your "
                     "prompt back. Set OPENAI_API_KEY (or OPENAI_BASE_URL) for a real model.")


def choose_llm(env: dict[str, str]) -> LLMChoice:
    """describe_llm(), with its resources folder ready to pass to `dapr run`.

    `resources/` holds the OpenAI provider, so the README's plain
    `dapr run --resources-path ./resources` works with a key. For the two
    other choices the same components are copied beside the matching
    provider from `resources/llm/` (Dapr allows one conversation component
    to be the default, so the others must not be loaded at all).
    """
    choice = describe_llm(env)
    if choice.resources != RESOURCES_DIR:
        shutil.rmtree(choice.resources, ignore_errors=True)
        choice.resources.mkdir(parents=True)
        for source in RESOURCES_DIR.glob("*.yaml"):
            if source.name != "llm-provider.yaml":
                shutil.copy(source, choice.resources / source.name)
        shutil.copy(RESOURCES_DIR / "llm" / f"{choice.name}.yaml", choice.resources / "llm-provider.yaml")
    return choice
