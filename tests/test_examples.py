"""examples/api_tour.py keeps working: the whole Python API on a tiny model, in seconds."""

import importlib.util
from pathlib import Path

from conftest import tiny_model, tiny_tokenizer, write_sharegpt

TOUR = Path(__file__).resolve().parents[1] / "examples" / "api_tour.py"


def test_api_tour_runs_end_to_end(tmp_path, capsys):
    folder = tmp_path / "tiny"
    tiny_model().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    spec = importlib.util.spec_from_file_location("api_tour", TOUR)
    tour = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tour)
    results = tour.main(["--model", str(folder), "--sharegpt", str(write_sharegpt(tmp_path / "s.json")),
                         "--tokens", "2000", "--steps", "4", "--draft-vocab", "64",
                         "--max-new-tokens", "6", "--work", str(tmp_path / "work")])
    assert [m["method"] for m in results["methods"]][0] == "vanilla"
    assert all(m["identical_to_vanilla"] == 1.0 for m in results["methods"])
    assert (tmp_path / "work" / "recipe.toml").is_file()
    assert (tmp_path / "work" / "head" / "koala.json").is_file()
    assert "validation top-1" in capsys.readouterr().out
