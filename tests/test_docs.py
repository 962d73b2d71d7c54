"""The documentation stays true: the site builds in strict mode (no broken link or anchor, no API
name that no longer exists), the new-family skeleton on its page runs and equals the shipped LLaVA
family, the page's "must override" table is what every family overrides, the README's links
resolve, and user-facing text cites no team-internal file."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NEW_FAMILY = DOCS / "new-family.md"


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """`mkdocs build --strict`: any warning (a link or anchor that does not resolve, a page
    outside the nav, an included file that is gone) or a `:::` name griffe cannot find fails."""
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    start = time.perf_counter()
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert time.perf_counter() - start < 120  # about 3-4 s on 2 cores: griffe reads, not imports
    losses = (site / "api" / "losses" / "index.html").read_text()
    assert "SigmoidDPOLoss" in losses and "CombinedLoss" in losses
    # the docstrings' reST maths came out as MathJax input, not as literal ".. math::"
    assert 'class="arithmatex"' in losses and ".. math::" not in losses
    assert r"\ell = -(1-\varepsilon)\,\log\sigma(h)" in losses
    assert "MyLlavaDPOModule" in (site / "new-family" / "index.html").read_text()
    results = (site / "results" / "index.html").read_text()  # benchmarks/RESULTS.md, included
    assert "Headline" in results and "24.5 ± 0.3" in results
    assert (site / "img" / "preview-diffusion.png").stat().st_size > 0


def skeleton_source() -> str:
    """The ```python block of docs/new-family.md that defines the skeleton family."""
    blocks = re.findall(r"```python\n(.*?)```", NEW_FAMILY.read_text(), re.S)
    (source,) = [b for b in blocks if "class MyLlavaDPOModule(AugDPOModule)" in b]
    return source


@pytest.fixture(scope="module")
def skeleton_class() -> type:
    module = types.ModuleType("docs_new_family_skeleton")
    exec(compile(skeleton_source(), str(NEW_FAMILY), "exec"), module.__dict__)
    sys.modules[module.__name__] = module  # importable by name, as a user's package would be
    yield module.MyLlavaDPOModule
    del sys.modules[module.__name__]


def test_the_skeleton_family_trains_as_the_shipped_llava(skeleton_class, tiny_llava_dir) -> None:
    """Built on a tiny LLaVA checkpoint, the page's skeleton puts LoRA in the language model only
    and gives the shipped LlavaDPOModule's rollouts, token tensors, log-probs and step-0 loss."""
    from lightning_aug_dpo import DiffusionNoise, LlavaDPOModule
    from lightning_aug_dpo.types import PairStats, PreferenceBatch

    def build(cls: type) -> LlavaDPOModule:
        torch.manual_seed(0)
        module = cls(model_name_or_path=str(tiny_llava_dir), lora_r=8, lora_alpha=16)
        module.configure_model()
        return module

    mine, shipped = build(skeleton_class), build(LlavaDPOModule)
    lora = [n for n, _ in mine.model.named_modules() if n.endswith("lora_A")]
    assert len(lora) == 2 * 7 and all(".language_model." in n for n in lora)  # 2 layers x 7
    assert mine.num_image_tokens() == shipped.num_image_tokens() == 16

    generator = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, h, w), generator=generator, dtype=torch.uint8)
              for h, w in ((48, 72), (64, 40))]  # fmt: skip
    pixels = mine.preprocess_images(images)
    assert torch.equal(pixels, shipped.preprocess_images(images))
    noised, _ = DiffusionNoise(noise_step=500)(pixels, [0, 1])
    questions = ["Describe the image in detail.", "What is in the picture and where?"]
    chosen = mine.rollout(pixels, questions, max_new_tokens=12)
    rejected = mine.rollout(noised, questions, max_new_tokens=12)
    assert chosen == shipped.rollout(pixels, questions, max_new_tokens=12)
    assert rejected == shipped.rollout(noised, questions, max_new_tokens=12)
    assert all(r.num_tokens > 0 for r in chosen + rejected)

    texts = ([r.text for r in chosen], [r.text for r in rejected])
    tokens = mine.tokenize_pairs(questions, *texts)
    reference_tokens = shipped.tokenize_pairs(questions, *texts)
    assert tokens.keys() == reference_tokens.keys()
    assert all(torch.equal(tokens[k], reference_tokens[k]) for k in tokens)
    stats = PairStats(prompts=2, kept=2, identical=0)
    batch = PreferenceBatch(
        pixel_values=pixels, aug_pixel_values=noised, meta={"stats": stats}, **tokens
    )
    loss, values = mine.preference_step(batch)
    shipped_loss, shipped_values = shipped.preference_step(batch)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)  # reference = adapter-disabled base
    assert shipped_loss.item() == pytest.approx(math.log(2), abs=1e-7)
    for key in ("logps/chosen", "logps/rejected"):
        torch.testing.assert_close(values[key], shipped_values[key], rtol=0, atol=1e-4)


def table_hooks(heading: str) -> list[str]:
    """Hook names in the first column of the table under ``heading`` in docs/new-family.md."""
    section = NEW_FAMILY.read_text().split(heading, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(\w+)\(", section, re.M)


def test_the_must_override_table_is_what_every_family_overrides(skeleton_class) -> None:
    import lightning_aug_dpo as lad
    from lightning_aug_dpo.family_hooks import FamilyHooks

    must = table_hooks("## The hooks a family must override")
    may = table_hooks("## The hooks a family may override")
    assert len(must) == 6 and not set(must) & set(may)
    # the skeleton overrides exactly the hooks the page says it must
    own = {name for name, value in vars(skeleton_class).items() if callable(value)}
    assert own == set(must)
    # ... and every shipped family overrides each of them (the defaults fit no VLM)
    names = [n for n in lad.__all__ if n.endswith("DPOModule") and n != "AugDPOModule"]
    families = [getattr(lad, name) for name in names]
    assert len(families) == 8
    for family in families:
        for hook in must:
            owner = next(c for c in family.__mro__ if hook in vars(c))
            assert owner is not FamilyHooks, f"{family.__name__} keeps the default {hook}"
    # every public hook is documented in one of the two tables (the helper in the prose)
    hooks = {n for n, v in vars(FamilyHooks).items() if callable(v) and not n.startswith("_")}
    assert hooks - set(must) - set(may) == {"forward_with_image_embeds"}
    assert "forward_with_image_embeds" in NEW_FAMILY.read_text()


def heading_slugs(markdown_file: Path) -> set[str]:
    from markdown.extensions.toc import slugify

    text = re.sub(r"```.*?```", "", markdown_file.read_text(), flags=re.S)
    return {slugify(h.strip(), "-") for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_the_readme_is_short_and_its_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    local = [link for link in links if not re.match(r"https?://", link)]
    assert len(local) >= 15  # the README points into the docs
    for link in local:
        path, _, anchor = link.partition("#")
        target = ROOT / path
        assert target.is_file(), f"README links to {link}, which does not exist"
        if anchor:
            assert anchor in heading_slugs(target), f"README links to {link}: no such heading"


USER_FACING = [ROOT / "README.md", *DOCS.rglob("*.md"), *ROOT.glob("benchmarks/*.md"),
               *ROOT.glob("configs/**/*.yaml")]  # fmt: skip
NOT_FOR_USERS = re.compile(r"SEVA\.md|DESIGN\.md|\bissue \d|\bissues? #?\d|device tool|\blent\b",
                           re.I)  # fmt: skip


def test_user_facing_text_cites_no_internal_file_or_issue() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in USER_FACING
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if NOT_FOR_USERS.search(line)
    ]
    assert not found, "\n".join(found)
