"""The doctor's check of the component files: each one parses, names a known component, keeps
no secret in plain text, and each folder Dapr loads holds exactly one LLM.
Standard library only; PyYAML where it is importable (else through .venv's Python)."""

from __future__ import annotations

import json
from pathlib import Path

from tools.doctor.base import VENV_PYTHON, Result, _mapping, output_of, shown
from tools.stack import settings

try:  # in .venv; the system python3 that runs `make doctor` may not have it
    import yaml
except ImportError:
    yaml = None

EXPECTED_COMPONENTS = ["agent-memory", "agent-workflow", "agent-registry", "agent-pubsub",
                       "agent-secretstore", "agent-config", "llm-provider"]
SECRET_FIELDS = {"key", "apikey", "password", "redispassword"}  # compared in lower case


def _check_resource_file(path: Path) -> tuple[list[Result], int | None]:
    """The problems in one file, and how many conversation components it holds (None: it does not parse)."""
    try:
        documents = [_mapping(doc) for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return [("FAIL", f"{shown(path)}{where}: YAML error: {problem}",
                 "fix the indentation or syntax there: spaces only, one column per block, `name: value`")], None
    except (OSError, UnicodeDecodeError) as exc:
        return [("FAIL", f"{shown(path)}: cannot be read ({exc})", "check the file's permissions and encoding")], None
    problems, conversations = [], 0
    for number, doc in enumerate(documents, start=1):
        label = shown(path) + (f" (document {number})" if len(documents) > 1 else "")
        is_component, spec = doc.get("kind") == "Component", _mapping(doc.get("spec"))
        fields = {"apiVersion": doc.get("apiVersion"), "kind": doc.get("kind"),
                  "metadata.name": _mapping(doc.get("metadata")).get("name")}
        if is_component:
            fields.update({"spec.type": spec.get("type"), "spec.version": spec.get("version")})
            conversations += str(spec.get("type")).startswith("conversation.")
        missing = [name for name, value in fields.items() if not value]
        if missing:
            problems.append(("FAIL", f"{label}: missing {', '.join(missing)}",
                             "add what is missing (resources/agent-memory.yaml is a complete component)"))
        items = spec.get("metadata") if is_component and isinstance(spec.get("metadata"), list) else []
        for item in map(_mapping, items):
            if str(item.get("name")).lower() in SECRET_FIELDS and item.get("value") not in (None, ""):
                problems.append(("FAIL", f"{label}: `{item['name']}` has a literal value, a secret in a file",
                                 "read it with secretKeyRef from agent-secretstore, like resources/llm-provider.yaml"))
    return problems, conversations


def _check_resources_here(directory: Path) -> list[Result]:
    main_files, alternatives = sorted(directory.glob("*.yaml")), sorted(directory.glob("llm/*.yaml"))
    if not main_files:
        return [("FAIL", f"no *.yaml in {shown(directory)}", "point it at the resources folder")]
    problems, conversations = [], {}
    for path in main_files + alternatives:
        file_problems, conversations[path] = _check_resource_file(path)
        problems += file_problems
    if None in conversations.values():
        return problems  # a count that skips a file which does not parse would mislead
    sets = {f"{shown(directory)}/": main_files}
    for alternative in alternatives:
        sets[f"{shown(directory)}/ with llm/{alternative.name}"] = \
            [path for path in main_files if path.name != "llm-provider.yaml"] + [alternative]
    for label, members in sets.items():
        count = sum(conversations[path] for path in members)
        if count != 1:
            problems.append(("FAIL", f"{label}: {count} conversation components, dapr-agents needs exactly one",
                             "keep one component of type conversation.* (named llm-provider) per set"))
    return problems or [("ok", f"resources: {len(conversations)} files valid, one LLM in each set Dapr loads", "")]


def check_resources(directory: Path) -> list[Result]:
    """The problems in directory/*.yaml and directory/llm/*.yaml, or one ok line.

    Each file must be a Dapr resource with no secret written in it, and each
    set of files Dapr loads together must hold exactly one conversation
    component (dapr-agents takes it as its LLM): the directory itself, and the
    directory with llm-provider.yaml swapped for a file of llm/, as `make run` does.
    Without PyYAML here, .venv/bin/python runs the same check.
    """
    directory = Path(directory).resolve()
    if yaml is not None:
        return _check_resources_here(directory)
    skipped = [("info", f"{shown(directory)}/ not checked: parsing YAML needs PyYAML, which comes with .venv",
                "`make setup`, then `make doctor` again")]
    if not VENV_PYTHON.exists():
        return skipped
    out = output_of([str(VENV_PYTHON), "-m", "tools.doctor", "--resources-json", str(directory)],
                    cwd=settings.ROOT, timeout=60)
    try:
        return [tuple(result) for result in json.loads(out)]
    except ValueError:  # .venv without PyYAML, or broken: say so rather than guess
        return skipped


def check_project_resources() -> list[Result]:
    return check_resources(settings.RESOURCES_DIR)
