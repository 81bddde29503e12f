"""The command line, through click's CliRunner (and one subprocess for import cost)."""

import json
import subprocess
import sys

from click.testing import CliRunner

from koala_core.cli import main


def test_help_does_not_import_torch():
    code = "import sys; from koala_core.cli import main; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([sys.executable, "-m", "koala_core.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "generate" in out and "plugins" in out


def test_plugins_json_lists_every_kind():
    result = CliRunner().invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) == {"heads", "tree_policies", "verifiers", "losses", "discriminators",
                         "adversarial_losses"}
    names = {v["name"]: v for v in data["verifiers"]}
    assert names["typical"]["lossy"] is True and names["greedy"]["lossy"] is False
    assert all(v["package"] == "koala" and v["version"] for v in data["heads"])


def test_plugins_text_marks_lossy():
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0
    typical = next(line for line in result.output.splitlines() if line.strip().startswith("typical"))
    assert "LOSSY" in typical


def test_unknown_plugin_is_exit_2_without_traceback():
    result = CliRunner().invoke(main, ["generate", "--head", "nope", "hi"])
    assert result.exit_code == 2
    assert "unknown head 'nope'" in result.output and "lookup, medusa" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(main, ["generate", "--tree", "bushy", "hi"])
    assert result.exit_code == 2 and "chain" in result.output


def test_bad_option_and_bad_model_are_clear(tmp_path):
    result = CliRunner().invoke(main, ["generate", "--tree", "chain", "--tree-option", "width=2",
                                       "hi"])
    assert result.exit_code == 2 and "tree policy 'chain'" in result.output
    assert "valid options: copy, depth" in result.output
    result = CliRunner().invoke(main, ["generate", "--model", str(tmp_path / "missing"), "hi"])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = CliRunner().invoke(main, ["generate", "--verifier", "greedy", "--temperature", "0.7",
                                       "hi"])
    assert result.exit_code == 2 and "rejection" in result.output
