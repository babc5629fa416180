"""The three SDK packages carry one version, wrun's, under their names.

The version lives in the root ``Cargo.toml`` (wrun's) and is repeated in
``guests/Cargo.toml`` (the Rust SDK inherits it), the JavaScript SDK's
``package.json`` and the Python SDK's ``pyproject.toml``; a release bumps
them together, and this test says which one was missed.
"""

import json
import tomllib
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
GUESTS = REPO / "guests"


def toml(path: Path) -> dict:
    with path.open("rb") as file:
        return tomllib.load(file)


class PackageTests(unittest.TestCase):
    def test_one_version_for_wrun_and_every_sdk(self):
        wrun = toml(REPO / "Cargo.toml")["workspace"]["package"]["version"]
        rust_sdk = toml(GUESTS / "sdk" / "Cargo.toml")["package"]
        self.assertEqual(rust_sdk["version"], {"workspace": True}, "guests/sdk/Cargo.toml")
        versions = {
            "guests/Cargo.toml": toml(GUESTS / "Cargo.toml")["workspace"]["package"]["version"],
            "guests/js/sdk/package.json": json.loads(
                (GUESTS / "js" / "sdk" / "package.json").read_text(encoding="utf-8")
            )["version"],
            "guests/python/sdk/pyproject.toml": toml(
                GUESTS / "python" / "sdk" / "pyproject.toml"
            )["project"]["version"],
        }
        for path, version in versions.items():
            self.assertEqual(version, wrun, f"{path} against wrun's version in Cargo.toml")

    def test_names_and_contents(self):
        self.assertEqual(toml(GUESTS / "sdk" / "Cargo.toml")["package"]["name"], "wrun-sdk")
        js = json.loads((GUESTS / "js" / "sdk" / "package.json").read_text(encoding="utf-8"))
        self.assertEqual(js["name"], "@wrun/sdk")
        self.assertEqual(js["exports"]["."], "./wrun.js")
        self.assertEqual(sorted(js["files"]), ["imports.js", "wrun.js"])
        py = toml(GUESTS / "python" / "sdk" / "pyproject.toml")
        self.assertEqual(py["project"]["name"], "wrun-sdk")
        self.assertEqual(py["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"], ["wrun_sdk"])


if __name__ == "__main__":
    unittest.main()
