#!/usr/bin/env python3
"""Writes the seed inputs of fuzz/corpus/<target>/ (python3 standard library only).

Run from anywhere: `python3 fuzz/seeds.py`. Seeds are named `seed-*` so they are
told apart from what the fuzzer found; `run.sh merge` keeps those that add
coverage. The archive seeds follow the formats the readers expect: `.ark` (a
zip: ark.toml pinning every other entry by sha256 and size) and `.arkc`
(container.toml pinning the nested bizes in [[files]] and the pipelines in
their engine's `pipelines`), both raw zips and harness "bundles" (see
fuzz/src/lib.rs). Components are a bare WebAssembly component header: the
readers do not run them.
"""
import hashlib
import hmac
import io
import json
import os
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORPUS = os.path.join(HERE, "corpus")

# A component preamble: \0asm, version 0x0d, layer 1.
COMPONENT = b"\x00asm\x0d\x00\x01\x00"
# The public key of fuzz/src/lib.rs's FUZZ_SECRET_KEY (RFC 8032 test key 1).
FUZZ_PUBLIC_KEY = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
WEBHOOK_SECRET = b"It's a Secret to Everybody"

RUN_SCHEMA = json.dumps({
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "additionalProperties": False,
    "properties": {
        "script": {"type": "string"},
        "shell": {"oneOf": [{"const": "sh", "type": "string"}, {"const": "bash", "type": "string"}]},
        "env": {"type": "object", "additionalProperties": {"type": "string"}, "default": {}},
        "errexit": {"type": "boolean", "default": True},
    },
    "required": ["script"],
    "title": "Run",
    "type": "object",
}, indent=2, sort_keys=True).encode()

UPPER_SCHEMA = json.dumps({
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "properties": {"text": {"type": "string", "maxLength": 64}},
    "required": ["text"],
    "type": "object",
}, sort_keys=True).encode()


def sha(b):
    return hashlib.sha256(b).hexdigest()


def ark_toml(name, steps, schemas, component=COMPONENT, capabilities='process = ["sh", "bash"]\n'):
    """An ark.toml for biz `name` with `steps` [(id, schema path)] pinning `schemas`."""
    out = f'''format_version = 1
name = "{name}"
version = "0.1.0"
description = "arkline step plugin: {name}"
license = "Apache-2.0"
host_api = "^0.1.0"

[component]
path = "component.wasm"
sha256 = "{sha(component)}"
size = {len(component)}
'''
    for sid, schema in steps:
        out += f'\n[[steps]]\nid = "{sid}"\ndescription = "step {sid}"\nschema = "{schema}"\n'
    out += f"\n[capabilities]\n{capabilities}"
    out += '''
[build]
packager = "cargo-ark 0.1.0"
rustc = "rustc 1.95.0 (59807616e 2026-04-14)"
target = "wasm32-wasip2"
profile = "ark"
'''
    for path in sorted(schemas):
        data = schemas[path]
        out += f'\n[[files]]\npath = "{path}"\nsha256 = "{sha(data)}"\nsize = {len(data)}\n'
    return out.encode()


def zip_bytes(entries, compress=zipfile.ZIP_DEFLATED, extra=None):
    """A deterministic zip of `entries` (name -> bytes), sorted, 1980 timestamps."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        items = sorted(entries.items()) if extra is None else list(entries.items()) + extra
        for name, data in items:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = compress
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            z.writestr(info, data)
    return buf.getvalue()


def shell_ark_entries():
    schemas = {"schemas/run.schema.json": RUN_SCHEMA}
    entries = {"ark.toml": ark_toml("shell", [("run", "schemas/run.schema.json")], schemas),
               "component.wasm": COMPONENT}
    entries.update(schemas)
    return entries


def faults_ark_entries():
    schemas = {"schemas/upper.schema.json": UPPER_SCHEMA, "schemas/echo.schema.json": b"{}"}
    entries = {"ark.toml": ark_toml("faults", [("upper", "schemas/upper.schema.json"),
                                               ("echo", "schemas/echo.schema.json")], schemas,
                                    capabilities='process = ["true"]\nhttp = ["127.0.0.1"]\ncache = true\nhost_call = ["kv.get"]\n'),
               "component.wasm": COMPONENT}
    entries.update(schemas)
    return entries


def bundle(entries, flags="", depth=0):
    """A harness bundle; a nested one (depth 1) marks its entries with `%%%%`."""
    marker = b"%" * (3 + depth) + b" "
    out = b"ARKFUZZ" + (b" " + flags.encode() if flags else b"") + b"\n"
    for name, data in entries.items():
        out += marker + name.encode() + b"\n" + data + b"\n"
    return out[:-1]


PIPELINE_A = b"""name: build
triggers:
  - type: manual
  - type: webhook
    events: [push]
    branch: [main]
    secret: hook
secrets: [hook]
stages:
  - name: build
    steps:
      - name: compile
        uses: shell@^0.1
        with:
          script: echo "artifact=out" >> "$ARKLINE_OUTPUT"
  - name: test
    steps:
      - name: test
        uses: shell/run
        with:
          script: test -s "${{ steps.compile.outputs.artifact }}"
          shell: sh
"""

PIPELINE_B = b"""name: transform
stages:
  - name: transform
    steps:
      - name: record
        uses: faults/upper
        with:
          text: record 42
finally:
  - name: done
    uses: faults/echo
"""


def container_toml(pipelines, bizes, trusted=False, shared=False):
    """container.toml: engine team-a (shell) and team-b (faults)."""
    a = [p for p in pipelines if p.startswith("engines/team-a/")]
    b = [p for p in pipelines if p.startswith("engines/team-b/")]
    out = 'format_version = 1\nname = "ci"\nversion = "1.0.0"\n'
    out += '\n[[engines]]\nname = "team-a"\n'
    if trusted:
        out += f'trusted_keys = ["{FUZZ_PUBLIC_KEY}"]\nrequire_signed = true\n'
    out += '\n[[engines.bizes]]\nname = "shell"\nversion = "0.1.0"\ngrants = ["process=sh"]\nactive = true\n'
    for p in a:
        out += f'\n[[engines.pipelines]]\npath = "{p}"\nsha256 = "{sha(pipelines[p])}"\nsize = {len(pipelines[p])}\n'
    out += '\n[engines.settings]\nexecutor_quota = 2\n\n[engines.settings.default_step_limits]\ntimeout = "5m"\n'
    out += '\n[[engines]]\nname = "team-b"\n'
    if not shared:
        out += '\n[[engines.bizes]]\nname = "faults"\nversion = "0.1.0"\nactive = true\n'
    for p in b:
        out += f'\n[[engines.pipelines]]\npath = "{p}"\nsha256 = "{sha(pipelines[p])}"\nsize = {len(pipelines[p])}\n'
    out += '\n[engines.settings]\nexecutor_quota = 1\n\n[engines.settings.retention]\nexecutions = 10\nlogs = "7days"\n'
    if shared:
        out += '\n[[shared_bizes]]\nname = "faults"\nversion = "0.1.0"\n'
    for path in sorted(bizes):
        out += f'\n[[files]]\npath = "{path}"\nsha256 = "{sha(bizes[path])}"\nsize = {len(bizes[path])}\n'
    return out.encode()


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def main():
    # --- ark_archive
    shell = shell_ark_entries()
    faults = faults_ark_entries()
    write("ark_archive", "shell.ark", zip_bytes(shell))
    write("ark_archive", "shell-stored.ark", zip_bytes(shell, zipfile.ZIP_STORED))
    write("ark_archive", "faults.ark", zip_bytes(faults))
    write("ark_archive", "traversal.ark", zip_bytes({**shell, "../evil": b"x"}))
    write("ark_archive", "duplicate.ark", zip_bytes(shell, extra=[("ark.toml", shell["ark.toml"])]))
    write("ark_archive", "trailing.ark", zip_bytes(shell) + b"trailing bytes")
    write("ark_archive", "bundle-shell", bundle(shell))
    write("ark_archive", "bundle-faults-deflate", bundle(faults, "d"))
    write("ark_archive", "bundle-shell-signed", bundle(shell, "s"))

    # --- arkc_archive
    pipelines = {"engines/team-a/pipelines/build.yaml": PIPELINE_A,
                 "engines/team-b/pipelines/transform.yaml": PIPELINE_B}
    bizes = {"bizes/shell-0.1.0.ark": zip_bytes(shell), "bizes/faults-0.1.0.ark": zip_bytes(faults)}
    arkc = {"container.toml": container_toml(pipelines, bizes), **bizes, **pipelines}
    write("arkc_archive", "ci.arkc", zip_bytes(arkc))
    shared = {"container.toml": container_toml(pipelines, bizes, shared=True), **bizes, **pipelines}
    write("arkc_archive", "shared.arkc", zip_bytes(shared))
    nested = {"bizes/shell-0.1.0.ark": bundle(shell, depth=1), "bizes/faults-0.1.0.ark": bundle(faults, "d", 1)}
    write("arkc_archive", "bundle-ci", bundle({"container.toml": container_toml(pipelines, bizes), **nested, **pipelines}))
    signed = {"bizes/shell-0.1.0.ark": bundle(shell, "s", 1), "bizes/faults-0.1.0.ark": bundle(faults, depth=1)}
    write("arkc_archive", "bundle-ci-trusted",
          bundle({"container.toml": container_toml(pipelines, bizes, trusted=True), **signed, **pipelines}))
    bad = dict(pipelines)
    bad["engines/team-b/pipelines/transform.yaml"] = PIPELINE_B.replace(b"text: record 42", b"text: 42")
    write("arkc_archive", "bundle-bad-config",
          bundle({"container.toml": container_toml(bad, bizes), **nested, **bad}))

    # --- manifest
    write("manifest", "shell.toml", shell["ark.toml"])
    write("manifest", "faults.toml", faults["ark.toml"])
    write("manifest", "container.toml", arkc["container.toml"])
    write("manifest", "container-trusted.toml", container_toml(pipelines, bizes, trusted=True, shared=True))

    # --- pipeline_yaml: the examples, as written
    for sub in ["examples/pipelines", "examples/container/pipelines/team-a",
                "examples/container/pipelines/team-b", "examples/quickstart/pipelines/team-a",
                "examples/quickstart/pipelines/team-b"]:
        d = os.path.join(ROOT, sub)
        for f in sorted(os.listdir(d)):
            if f.endswith(".yaml"):
                with open(os.path.join(d, f), "rb") as fh:
                    write("pipeline_yaml", sub.replace("/", "-") + "-" + f, fh.read())

    # --- expression
    exprs = [
        "params.deploy && steps.unit.state == 'Succeeded' && params.target in ['staging', 'prod']",
        "!(event == 'tag')",
        "!params.dry_run && (\"rc\" in branch) == false",
        "steps.audit.state == 'Failed' || steps.deny.state == 'Failed'",
        "secrets.token == 'abc'",
        "params.n == 3 && [1, 2.5, -3] != [true] && 'a\\'b\\n' in params.targets",
        "commit in ['0123456789abcdef'] || branch == \"release/1.2\"",
        "app:${{ steps.build.outputs.image }} on ${{ branch }} (${{ commit }}) ${{ params.n }}",
        "--token ${{ secrets.token }} ${{ params.targets }} ${{ params.big }}",
        "cargo-${{ branch }}-${{ params.deploy && true }}",
    ]
    for i, e in enumerate(exprs):
        write("expression", f"{i:02}", e.encode())

    # --- webhook_payload: selector byte (0 GitHub, 1 GitLab), event, credential, body
    def github(event, body):
        sig = "sha256=" + hmac.new(WEBHOOK_SECRET, body, hashlib.sha256).hexdigest()
        return b"\x00" + event.encode() + b"\n" + sig.encode() + b"\n" + body

    def gitlab(event, body, token=WEBHOOK_SECRET):
        return b"\x01" + event.encode() + b"\n" + token + b"\n" + body

    sha1 = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
    sha2 = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"
    repo = {"full_name": "octo/app", "clone_url": "https://github.com/octo/app.git"}
    push = {"ref": "refs/heads/main", "before": sha2, "after": sha1, "created": False,
            "deleted": False, "repository": repo, "pusher": {"name": "octo"},
            "head_commit": {"id": sha1, "message": "Fix all the bugs"}}
    write("webhook_payload", "github-push", github("push", json.dumps(push).encode()))
    write("webhook_payload", "github-tag", github("push", json.dumps({**push, "ref": "refs/tags/v1.2.0"}).encode()))
    write("webhook_payload", "github-delete",
          github("push", json.dumps({**push, "deleted": True, "after": "0" * 40}).encode()))
    pr = {"action": "synchronize", "number": 42,
          "pull_request": {"number": 42, "head": {"ref": "feature/x", "sha": sha1},
                           "base": {"ref": "main", "sha": sha2}},
          "repository": repo}
    write("webhook_payload", "github-pr", github("pull_request", json.dumps(pr).encode()))
    write("webhook_payload", "github-ping", github("ping", b'{"zen":"Keep it logically awesome.","hook_id":1}'))
    gl_push = {"object_kind": "push", "ref": "refs/heads/release/1.2", "before": sha2, "after": sha1,
               "checkout_sha": sha1, "project": {"path_with_namespace": "group/app"}}
    write("webhook_payload", "gitlab-push", gitlab("Push Hook", json.dumps(gl_push).encode()))
    write("webhook_payload", "gitlab-tag",
          gitlab("Tag Push Hook", json.dumps({**gl_push, "object_kind": "tag_push", "ref": "refs/tags/v2"}).encode()))
    mr = {"object_kind": "merge_request",
          "object_attributes": {"iid": 7, "action": "update", "oldrev": sha2, "source_branch": "feat",
                                "target_branch": "main", "last_commit": {"id": sha1}}}
    write("webhook_payload", "gitlab-mr", gitlab("Merge Request Hook", json.dumps(mr).encode(), b"wrong-token"))


if __name__ == "__main__":
    main()
