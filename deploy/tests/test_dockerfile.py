"""The Dockerfile: hadolint-clean, multi-stage, the release build, a shell-less non-root runtime."""

from __future__ import annotations

import json
import re
import tomllib

import pytest

from deploy_support import DEPLOY, REPO, TARGETS, run, tool

DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(m[1].upper(), m[2].strip()) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", joined, re.M)]


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for op, args in instructions(text):
        if op == "FROM":
            result.append([])
        if result:
            result[-1].append((op, args))
    return result


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


def test_hadolint_finds_nothing():
    out = run(tool("hadolint"), "--no-color", "--config", str(DEPLOY / ".hadolint.yaml"), str(DOCKERFILE))
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_does_object_to_a_careless_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM rust:latest\nRUN apt-get install -y curl\nCMD marketplace all\n")
    out = run(tool("hadolint"), "--no-color", "--config", str(DEPLOY / ".hadolint.yaml"), str(bad))
    assert out.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3025"):
        assert rule in out.stdout


def test_the_builder_is_a_pinned_rust_at_least_the_workspace_rust_version(dockerfile):
    builder = stages(dockerfile)[0]
    image = builder[0][1].split()[0]
    m = re.fullmatch(r"rust:(\d+)\.(\d+)\.(\d+)-slim-bookworm", image)
    assert m, f"builder {image} is not a pinned rust:X.Y.Z-slim-bookworm"
    minimum = tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["package"]["rust-version"]
    assert tuple(map(int, m.groups()[:2])) >= tuple(map(int, minimum.split(".")[:2]))


def test_the_image_holds_the_release_build_of_the_marketplace_binary(dockerfile):
    builder, runtime = stages(dockerfile)[0], stages(dockerfile)[-1]
    (build,) = [args for op, args in builder if op == "RUN" and "cargo build" in args]
    assert re.search(r"cargo build --release --locked --bin marketplace\b", build)
    assert "target/release/marketplace /out/marketplace" in build
    copies = [args for op, args in runtime if op == "COPY"]
    assert "--from=builder /out/marketplace /usr/local/bin/marketplace" in copies


def test_the_runtime_is_distroless_non_root_and_runs_no_shell(dockerfile):
    all_stages = stages(dockerfile)
    assert len(all_stages) >= 2, "multi-stage: the toolchain stays out of the image"
    runtime = all_stages[-1]
    assert runtime[0][1] == "gcr.io/distroless/cc-debian12:nonroot"
    ops = [op for op, _ in runtime]
    assert "RUN" not in ops, "the runtime stage has no shell to RUN with"
    (user,) = [args for op, args in runtime if op == "USER"]
    assert user.split(":")[0] not in ("0", "root")
    (entrypoint,) = [args for op, args in runtime if op == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["marketplace"]
    (cmd,) = [args for op, args in runtime if op == "CMD"]
    assert json.loads(cmd)[0] in ("all", *TARGETS)
    assert ("EXPOSE", "8000") in runtime


def test_the_test_script_builds_the_same_release_binary():
    script = REPO / "test.sh"
    if not script.exists():
        pytest.skip("no test.sh yet")
    assert "cargo build --release" in script.read_text()


# ---- .dockerignore ------------------------------------------------------------------------


def _pattern(p: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(p):
        if p.startswith("**", i):
            out, i = out + ".*", i + 2
        elif p[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif p[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(p[i]), i + 1
    return re.compile(out)


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    verdict = False
    for negated, rx in rules:
        if any(rx.fullmatch(prefix) for prefix in prefixes):
            verdict = not negated
    return verdict


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        rules.append((negated, _pattern(line.lstrip("!").strip("/"))))
    return rules


def test_the_build_context_holds_every_crate_and_nothing_heavy():
    rules = dockerignore_rules(DOCKERIGNORE.read_text())
    members = tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["members"]
    needed = ["Cargo.toml", "Cargo.lock", "src/main.rs"]
    for member in members:
        needed += [f"{member}/Cargo.toml", f"{member}/src/lib.rs", f"{member}/migrations/0001_init.sql"]
    missing = [p for p in needed if ignored(p, rules)]
    assert not missing, f"the build would lack {missing}: allow them in .dockerignore"
    for heavy in ("target/release/marketplace", "payment/target/debug/x", ".git/HEAD", "data/payment.db",
                  "tests-py/conftest.py", "deploy/README.md", ".venv/bin/python", "common/.env"):
        assert ignored(heavy, rules), f"{heavy} would be sent to the builder"


def test_the_dockerignore_matcher_can_tell_excluded_from_allowed():
    rules = dockerignore_rules("*\n!keep\n**/target\n")
    assert ignored("other/file", rules)
    assert not ignored("keep/src/lib.rs", rules)
    assert ignored("keep/target/x", rules)


def test_every_crate_on_disk_is_a_workspace_member():
    members = set(tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["members"])
    crates = {p.parent.name for p in REPO.glob("*/Cargo.toml")}
    assert crates <= members, f"crates outside the workspace (and the image): {crates - members}"


def test_the_runtime_matches_the_services_port_and_data_dir(dockerfile):
    runtime = stages(dockerfile)[-1]
    env = " ".join(args for op, args in runtime if op == "ENV")
    assert "HTTP_ADDR=0.0.0.0:8000" in env and "DATA_DIR=/data" in env
    # SQLite, when DATABASE_URL is unset, needs a directory the non-root user owns.
    assert "--from=builder --chown=65532:65532 /out/data /data" in [args for op, args in runtime if op == "COPY"]
