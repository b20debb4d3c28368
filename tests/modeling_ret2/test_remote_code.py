import ast
import sys

import pytest
import torch
from conftest import REPO, pattern
from remote_code import load_in_clean_process

REMOTE_CODE_FILES = [
    REPO / "configuration_ret2" / "configuration_ret2.py",
    REPO / "modeling_ret2" / "modeling_ret2.py",
    REPO / "modeling_ret2" / "processing_ret2.py",
    REPO / "modeling_ret2" / "sentence_ret2.py",
]


@pytest.mark.parametrize("path", REMOTE_CODE_FILES, ids=lambda p: p.name)
def test_remote_code_imports_only_torch_transformers_and_siblings(path):
    """Every import of a file that travels to the Hub is torch, transformers, the standard library, PIL/numpy
    (transformers' own image dependencies) or a `from .sibling import` of another such file."""
    allowed = {"torch", "transformers", "PIL", "numpy"} | set(sys.stdlib_module_names)
    siblings = {p.stem for p in REMOTE_CODE_FILES}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                assert node.level == 1 and node.module in siblings, f"{path.name}: from {'.' * node.level}{node.module}"
                continue
            names = [node.module.split(".")[0]]
        else:
            continue
        assert set(names) <= allowed, f"{path.name} imports {names}"


def test_config_class_is_one_class():
    import configuration_ret2
    import modeling_ret2
    from modeling_ret2 import modeling_ret2 as modeling

    assert modeling.Ret2Config is configuration_ret2.Ret2Config is modeling_ret2.Ret2Model.config_class


@pytest.mark.slow
def test_model_and_processor_round_trip_in_clean_process(tiny, tiny_model_dir, tmp_path):
    model, processor = tiny
    folder = tiny_model_dir
    assert {"configuration_ret2.py", "modeling_ret2.py", "processing_ret2.py"} <= {p.name for p in folder.iterdir()}
    texts = ["a red circle on the left", None, "big blue square"]
    for i in (1, 2):
        pattern(i).convert("RGBA").save(tmp_path / f"image{i}.png")
    images = [None] + [pattern(i).convert("RGBA") for i in (1, 2)]
    inputs = processor(text=texts, images=images, return_tensors="pt")
    with torch.no_grad():
        torch.save(
            {"inputs": dict(inputs), "queries": model.encode_queries(**inputs), "docs": model.encode_documents(**inputs)},
            tmp_path / "expected.pt",
        )
    out = load_in_clean_process(
        tmp_path,
        f"""
        import torch
        from PIL import Image
        from transformers import AutoConfig, AutoModel, AutoProcessor
        folder = {str(folder)!r}
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        assert type(config).__name__ == "Ret2Config" and type(model).__name__ == "Ret2Model"
        assert type(processor).__name__ == "Ret2Processor"
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        images = [None] + [Image.open({str(tmp_path)!r} + f"/image{{i}}.png") for i in (1, 2)]
        inputs = processor(text={texts!r}, images=images, return_tensors="pt")
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        for key, value in expected["inputs"].items():
            assert torch.equal(inputs[key], value), key
        with torch.no_grad():
            dq = (model.encode_queries(**inputs) - expected["queries"]).abs().max().item()
            dd = (model.encode_documents(**inputs) - expected["docs"]).abs().max().item()
        print("max diff", dq, dd)
        assert dq == 0.0 and dd == 0.0
        """,
    )
    assert "max diff 0.0 0.0" in out
