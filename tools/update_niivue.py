"""Vendor NiiVue's built UMD file into the package (maintainers; needs npm and the npm registry).

    python tools/update_niivue.py [VERSION]      # default: the version in VERSION, to refresh it

What it does: ``npm install @niivue/niivue@VERSION`` in a temporary folder (production
dependencies only), copies ``dist/niivue.umd.js`` (the self-contained build: one ``<script>``,
no imports, no workers, works from a ``file://`` page) to
``src/glioseg/evaluation/assets/niivue/``, writes ``VERSION`` (version, SHA-256, size) and
``THIRD_PARTY.md`` (the licence of NiiVue and of every package npm installed beside it: the UMD
build bundles them). NiiVue's npm package carries no LICENSE file, so ``LICENSE`` (BSD-2-Clause,
copied from github.com/niivue/niivue) is kept as it is; check it is unchanged upstream when you
update. Then run ``pytest tests/evaluation/test_viewer_browser.py`` (real browser) and look at
the screenshot it leaves in the pytest tmp folder.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "src" / "glioseg" / "evaluation" / "assets" / "niivue"
LICENCE_NAMES = ("LICENSE", "LICENSE.md", "LICENSE.txt", "license", "LICENCE", "license.md")


def _licence_text(folder: Path) -> str:
    for name in LICENCE_NAMES:
        if (folder / name).is_file():
            return (folder / name).read_text(encoding="utf-8").strip()
    return "(no licence file in the npm package; see its package.json licence field)"


def _third_party(node_modules: Path) -> str:
    parts = ["# Third-party code in niivue.umd.js\n",
             "NiiVue's UMD build bundles its production dependencies. Their licences, as npm installed "
             "them beside NiiVue (tools/update_niivue.py):\n"]
    # npm installs flat: every package sits at node_modules/NAME or node_modules/@SCOPE/NAME.
    manifests = [*node_modules.glob("[!@.]*/package.json"), *node_modules.glob("@*/*/package.json")]
    for manifest in sorted(manifests):
        folder = manifest.parent
        meta = json.loads(manifest.read_text(encoding="utf-8"))
        if "name" not in meta or "version" not in meta or meta["name"] == "@niivue/niivue":
            continue
        parts.append(f"\n## {meta['name']} {meta['version']} ({meta.get('license', 'unknown')})\n\n```\n"
                     f"{_licence_text(folder)}\n```\n")
    return "".join(parts)


def main(version: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "install", "--omit=dev", "--omit=optional", "--no-audit", "--no-fund", "--ignore-scripts",
                        f"@niivue/niivue@{version}"], cwd=tmp, check=True)
        package = Path(tmp) / "node_modules" / "@niivue" / "niivue"
        meta = json.loads((package / "package.json").read_text(encoding="utf-8"))
        if meta["license"] != "BSD-2-Clause":
            sys.exit(f"NiiVue {meta['version']} is licensed {meta['license']}, not BSD-2-Clause: check before vendoring")
        built = package / "dist" / "niivue.umd.js"
        data = built.read_bytes()
        if b"</script" in data:
            sys.exit("niivue.umd.js contains '</script': it cannot be inlined in a <script> element")
        shutil.copyfile(built, ASSETS / "niivue.umd.js")
        (ASSETS / "VERSION").write_text(json.dumps({
            "package": "@niivue/niivue", "version": meta["version"], "file": "dist/niivue.umd.js",
            "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "license": meta["license"]},
            indent=1) + "\n", encoding="utf-8")
        (ASSETS / "THIRD_PARTY.md").write_text(_third_party(Path(tmp) / "node_modules"), encoding="utf-8")
    print(f"vendored @niivue/niivue {meta['version']} ({len(data) / 1e6:.2f} MB) into {ASSETS}")
    return 0


if __name__ == "__main__":
    current = json.loads((ASSETS / "VERSION").read_text())["version"] if (ASSETS / "VERSION").is_file() else None
    wanted = sys.argv[1] if len(sys.argv) > 1 else current
    if not wanted:
        sys.exit("give the NiiVue version to vendor, e.g. python tools/update_niivue.py 0.69.0")
    sys.exit(main(wanted))
