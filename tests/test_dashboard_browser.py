"""The dashboard in headless Chromium against the running service (with an API token): the job list follows a
running conversion, a conversion's page shows its shards, a training's page draws its curves (growing while it
runs), and the page's buttons cancel and re-submit; runs ticked in the list are compared (curves overlaid, differing
fields listed), and a training's "try the model" box shows what its checkpoint writes.

Needs Debian's `chromium` at /usr/bin/chromium (driven by Playwright; no downloaded browser). Training jobs are
written through the store (tests/storedjobs.py) rather than trained, to keep these tests to seconds.
"""

import json
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from app.jobs.models import JobState

from browserutil import launch
from serverutil import SHARED_DATA, long_conversion, start_server, wait_for_state
from storedjobs import (
    add_checkpoint,
    add_eval_job,
    add_train_job,
    advance_train_job,
    insert_train_job,
    small_train_spec,
    train_metrics,
)
from training_data import shakespeare_docs

pytestmark = pytest.mark.needs("chromium")

TOKEN = "dashboard-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start_server(tmp_path_factory.mktemp("dashboard") / "data", workers=1, token=TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    """A page of the dashboard's origin that knows the token, as if the user had saved it before."""
    context = browser.new_context(base_url=server.base_url, viewport={"width": 1280, "height": 900})
    context.add_init_script(f"localStorage.setItem('openseek-nanochat.token', {TOKEN!r})")
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(error))
    yield page
    context.close()
    assert not errors, f"the page raised: {errors}"


@pytest.fixture(scope="module")
def long_spec(server) -> dict:
    """A conversion of several seconds whose fraction grows with the documents written (max_docs sets the total)."""
    return long_conversion(server, copies=40, max_docs=280_000)


def test_the_list_follows_a_running_conversion_until_it_succeeds(browser, server, long_spec):
    # a fresh browser: the user enters the token in the page
    context = browser.new_context(base_url=server.base_url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto("/")
    expect(page.locator("#notice")).to_contain_text("needs an API token")
    page.get_by_label("API token").fill(TOKEN)
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#notice")).to_be_hidden()

    job = server.client.post("/jobs/convert", json={**long_spec, "name": "moving"}).json()
    row = page.locator(f'#jobs tr[data-job-id="{job["id"]}"]')
    expect(row).to_contain_text("moving")  # appears without a reload
    expect(row.locator(".state")).to_have_text("running", timeout=30_000)
    bar = row.locator("progress")

    def fraction() -> float:
        return bar.evaluate("bar => bar.hasAttribute('value') ? bar.value : -1")

    page.wait_for_function(f"() => document.querySelector('#jobs tr[data-job-id=\"{job['id']}\"] progress')?.value > 0")
    seen = [fraction()]
    while len(set(seen)) < 3 and row.locator(".state").inner_text() == "running":
        page.wait_for_timeout(300)
        seen.append(fraction())
    moving = sorted(set(seen))
    assert len(moving) >= 3 and seen == sorted(seen), f"the progress bar did not move steadily: {seen}"
    assert re.search(r"docs/s", row.inner_text())  # a rate while it runs

    expect(row.locator(".state")).to_have_text("succeeded", timeout=60_000)
    expect(row).to_contain_text("100.0 %")
    context.close()


def test_a_conversions_page_shows_its_manifest(page, server):
    spec = {
        "name": "gsm8k",
        "sources": [
            {
                "type": "files",
                "paths": [str(SHARED_DATA / "jsonl" / "gsm8k.jsonl")],
                "text_template": "{question}\n{answer}",
            }
        ],
        "chars_per_shard": 100_000,
    }
    job = wait_for_state(server.client, server.client.post("/jobs/convert", json=spec).json()["id"], "succeeded")
    manifest = server.client.get(f"/jobs/{job['id']}/manifest").json()
    page.goto(f"/#/jobs/{job['id']}")
    expect(page.locator("#job-state")).to_have_text("succeeded")
    rows = page.locator("#manifest tbody tr")
    expect(rows).to_have_count(len(manifest["shards"]))
    for i, shard in enumerate(manifest["shards"]):
        cells = rows.nth(i).locator("td")
        expect(cells.nth(0)).to_have_text(shard["file"])
        expect(cells.nth(1)).to_have_text(shard["split"])
        expect(cells.nth(5)).to_have_text(shard["sha256"])
    expect(page.locator("#log")).to_contain_text("attempt 1 started")


def test_a_conversions_dataset_page_draws_shares_and_browses_samples(page, server):
    gsm8k, math500 = (str(SHARED_DATA / "jsonl" / f"{name}.jsonl") for name in ("gsm8k", "math500"))
    spec = {
        "name": "two-sources",
        "sources": [
            {"type": "files", "paths": [gsm8k], "text_template": "{question}\n{answer}"},
            {"type": "files", "paths": [math500], "text_template": "{problem}\n{solution}", "weight": 3},
        ],
        "chars_per_shard": 200_000,
    }
    job = wait_for_state(server.client, server.client.post("/jobs/convert", json=spec).json()["id"], "succeeded")
    page.goto(f"/#/jobs/{job['id']}")
    expect(page.locator("#dataset-section")).to_be_visible()
    bars = page.locator("#share-chart .share-row")
    expect(bars).to_have_count(2)  # one bar per source
    expect(bars.nth(0)).to_have_attribute("data-source", gsm8k)
    expect(bars.nth(0).locator(".bar.got")).to_have_count(1)
    expect(page.locator("#length-chart .length-bin").first).to_be_visible()

    first = server.client.get(f"/jobs/{job['id']}/samples", params={"n": 20, "seed": 0, "max_chars": 4000}).json()
    expect(page.locator("#sample-where")).to_contain_text(f"line {first[0]['locator']['line']}")
    expect(page.locator("#sample-text")).to_contain_text(first[0]["text"][:30])
    page.click("#sample-next")
    expect(page.locator("#sample-position")).to_have_text("document 2")
    expect(page.locator("#sample-where")).to_contain_text(f"{first[1]['shard']} row {first[1]['row']}")
    page.select_option("#sample-source", math500)
    expect(page.locator("#sample-where")).to_contain_text(f"{math500} · file {math500}, line ")


def test_a_blend_of_84_parts_stays_readable_grouped_by_folder_and_sortable(page, server):
    # OpenSeek's data_path blends 84 parts from a few folders: the chart groups them by folder, and sorts within
    weights, sources = {}, []
    for i in range(84):
        path = server.data_dir.parent / "blend" / f"folder-{i % 3}" / f"part_{i:03d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "".join(json.dumps({"text": f"part {i} document {j} " + "word " * j}) + "\n" for j in range(30))
        )
        weights[str(path)] = 1 + i % 5
        sources.append({"type": "files", "paths": [str(path)], "weight": weights[str(path)]})
    spec = {"name": "blend-84", "sources": sources, "chars_per_shard": 200_000, "val_docs": 20}
    job = wait_for_state(server.client, server.client.post("/jobs/convert", json=spec).json()["id"], "succeeded")
    page.goto(f"/#/jobs/{job['id']}")
    chart = page.locator("#share-chart")
    expect(chart.locator(".share-row")).to_have_count(84)
    expect(chart.locator(".share-group")).to_have_count(3)
    expect(chart.locator(".share-group").first).to_contain_text("28 source(s)")

    def groups() -> list[list[str]]:
        """The rows' sources under each folder heading, in the order drawn."""
        drawn = chart.locator(".share-group, .share-row").evaluate_all(
            "els => els.map(e => e.classList.contains('share-group') ? null : e.dataset.source)"
        )
        out = []
        for source in drawn:
            if source is None:
                out.append([])
            else:
                out[-1].append(source)
        return out

    assert [len(members) for members in groups()] == [28, 28, 28]
    assert all(members == sorted(members) for members in groups())  # by name, the default
    assert all(len({Path(m).parent for m in members}) == 1 for members in groups())  # one folder a heading
    page.select_option("#share-sort", "weight")
    by_weight = groups()
    assert [len(members) for members in by_weight] == [28, 28, 28]
    for members in by_weight:
        drawn = [weights[m] for m in members]
        assert drawn == sorted(drawn, reverse=True) and len(set(drawn)) == 5


def test_a_finished_trainings_page_draws_one_point_per_logged_step(page, server, tmp_path):
    job_id, records = add_train_job(server.data_dir, tmp_path, num_iterations=20, eval_every=5)
    page.goto(f"/#/jobs/{job_id}")
    expect(page.locator("#job-state")).to_have_text("succeeded")
    loss_chart = page.locator("#loss-chart")
    expect(loss_chart.locator("polyline")).to_have_count(1)

    losses = [(r["step"], r["loss"]) for r in records if r["loss"] is not None]
    vertices = [tuple(map(float, v.split(","))) for v in loss_chart.locator("polyline").get_attribute("points").split()]
    assert len(vertices) == len(losses) == 20
    expect(loss_chart.locator("circle")).to_have_count(len(losses))
    xs = [x for x, _ in vertices]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)  # one point per step, in step order
    # higher loss is drawn higher (smaller y): the picture has the data's shape
    by_loss = [y for _, y in sorted(zip((loss for _, loss in losses), (y for _, y in vertices)))]
    assert by_loss == sorted(by_loss, reverse=True)
    expect(loss_chart).to_have_attribute("aria-label", re.compile(r"over 20 steps"))

    bpb_points = [r for r in records if r["val_bpb"] is not None]
    bpb_vertices = page.locator("#bpb-chart polyline").get_attribute("points").split()
    assert len(bpb_vertices) == len(bpb_points) == 5  # steps 0, 5, 10, 15, 20
    mean_speed = sum(r["tok_per_sec"] for r in records[1:]) / 20
    expect(page.locator("#train-facts")).to_contain_text(f"{round(mean_speed):,}")


def test_cancel_on_the_page_cancels_the_running_job(page, server, long_spec):
    job = server.client.post("/jobs/convert", json={**long_spec, "name": "to-cancel"}).json()
    wait_for_state(server.client, job["id"], "running")
    page.goto(f"/#/jobs/{job['id']}")
    expect(page.locator("#job-state")).to_have_text("running")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel job").click()
    expect(page.locator("#job-state")).to_have_text("cancelled", timeout=30_000)
    expect(page.get_by_role("button", name="Cancel job")).to_be_disabled()
    assert server.client.get(f"/jobs/{job['id']}").json()["state"] == "cancelled"


def test_resubmit_on_the_page_submits_the_edited_spec_as_a_new_job(page, server):
    spec = {
        "sources": [
            {
                "type": "files",
                "paths": [str(SHARED_DATA / "jsonl" / "gsm8k.jsonl")],
                "text_template": "{question}\n{answer}",
            }
        ],
        "max_docs": 200,
        "chars_per_shard": 20_000,
    }
    job = wait_for_state(server.client, server.client.post("/jobs/convert", json=spec).json()["id"], "succeeded")
    page.goto(f"/#/jobs/{job['id']}")
    expect(page.locator("#job-state")).to_have_text("succeeded")
    form_spec = page.get_by_label("The spec this job runs")
    shown = form_spec.input_value()
    assert "output_dir" not in shown  # it was derived from the old job's id: the new job gets its own

    form_spec.fill("{not json")
    page.get_by_role("button", name="Submit as a new job").click()
    expect(page.locator("#resubmit-error")).to_contain_text("not valid JSON")

    form_spec.fill(shown.replace('"max_docs": 200', '"max_docs": 100'))
    page.get_by_role("button", name="Submit as a new job").click()
    page.wait_for_url(re.compile(r"#/jobs/(?!" + job["id"] + r")[0-9a-f]{16}$"))
    new_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#job-id")).to_have_text(new_id)
    new_job = wait_for_state(server.client, new_id, "succeeded")
    assert new_job["spec"]["max_docs"] == 100 and new_job["spec"]["sources"] == job["spec"]["sources"]
    assert new_job["spec"]["output_dir"] != job["spec"]["output_dir"]
    expect(page.locator("#job-state")).to_have_text("succeeded")


def test_a_running_trainings_curves_grow_as_steps_are_logged(page, server, tmp_path):
    spec = small_train_spec(tmp_path, num_iterations=20, eval_every=5)
    records = train_metrics(20, 5)
    job_id = insert_train_job(server.data_dir, spec, records[:6], JobState.running)  # steps 0..5 so far
    page.goto(f"/#/jobs/{job_id}")
    expect(page.locator("#job-state")).to_have_text("running")
    expect(page.locator("#loss-chart")).to_have_attribute("data-points", "5")
    expect(page.locator("#bpb-chart")).to_have_attribute("data-points", "2")

    advance_train_job(server.data_dir, job_id, spec, records[6:12])  # steps 6..11, one more evaluation
    expect(page.locator("#loss-chart")).to_have_attribute("data-points", "11")
    expect(page.locator("#bpb-chart")).to_have_attribute("data-points", "3")
    expect(page.locator("#train-facts")).to_contain_text("11 of 20")
    assert len(page.locator("#loss-chart polyline").get_attribute("points").split()) == 11


def write_mixture(folder, sources: list[tuple[str, float, float]]):
    """A dataset folder whose manifest lists these (name, weight, share of characters) sources."""
    folder.mkdir(parents=True)
    listed = [{"name": n, "type": "files", "weight": w, "share_chars": share} for n, w, share in sources]
    (folder / "manifest.json").write_text(json.dumps({"complete": True, "sources": listed, "totals": {"chars": 10**6}}))
    return folder


def test_the_compare_view_overlays_two_runs_and_lists_what_differs(page, server, tmp_path):
    mixed = write_mixture(tmp_path / "mixed", [("gsm8k", 1.0, 0.25), ("shakespeare", 3.0, 0.75)])
    alone = write_mixture(tmp_path / "alone", [("shakespeare", 1.0, 1.0)])
    first = small_train_spec(mixed, num_iterations=20, eval_every=5)
    second = {
        **small_train_spec(alone, num_iterations=12, eval_every=4),
        "depth": 6,
        "matrix_lr": 0.03,
        "device_batch_size": 4,
    }
    ids = [
        insert_train_job(server.data_dir, first, train_metrics(20, 5), JobState.succeeded),
        insert_train_job(server.data_dir, second, train_metrics(12, 4), JobState.succeeded),
    ]
    add_eval_job(server.data_dir, ids[0], 20, str(alone), 8192, 1.2345)

    page.goto("/")
    for job_id in ids:
        page.get_by_label(f"compare job {job_id}").check()
    page.get_by_role("button", name="Compare 2 selected runs").click()
    page.wait_for_url(re.compile(r"#/compare\?ids="))
    assert sorted(page.url.split("ids=")[1].split(",")) == sorted(ids)

    for chart, per_run in (("#compare-loss", [20, 12]), ("#compare-bpb", [5, 4])):
        lines = page.locator(f"{chart} polyline")
        expect(lines).to_have_count(2)
        drawn = {
            lines.nth(i).get_attribute("data-series"): lines.nth(i).get_attribute("points").split() for i in range(2)
        }
        assert {job_id: len(drawn[job_id]) for job_id in ids} == dict(zip(ids, per_run))

    # by tokens seen, the second run (4 x 256 x 2 = 2,048 tokens a step) ends at a quarter of the first's range
    # (8 x 256 x 2 = 4,096 a step for 20 steps), not at 12/20 of it as by step
    def last_x(job_id: str) -> float:
        return float(
            page.locator(f'#compare-loss polyline[data-series="{job_id}"]')
            .get_attribute("points")
            .split()[-1]
            .split(",")[0]
        )

    def fraction_of_first(job_id: str) -> float:
        left = float(
            page.locator(f'#compare-loss polyline[data-series="{ids[0]}"]')
            .get_attribute("points")
            .split()[0]
            .split(",")[0]
        )
        return (last_x(job_id) - left) / (last_x(ids[0]) - left)

    assert fraction_of_first(ids[1]) == pytest.approx((12 - 1) / (20 - 1), abs=0.01)
    page.get_by_label("x axis").select_option("tokens")
    expect(page.locator("#compare-loss")).to_have_attribute(
        "aria-label", re.compile(r"loss over 20 points: .* at tokens 81\.9k")
    )
    assert fraction_of_first(ids[1]) == pytest.approx((12 * 2048 - 4096) / (20 * 4096 - 4096), abs=0.01)
    expect(page.locator(".compare-axis").first).to_have_text("tokens seen")

    fields = page.locator("#compare-fields tbody tr")
    differing = [fields.nth(i).get_attribute("data-field") for i in range(fields.count())]
    assert differing[:2] == ["dataset mixture", "final val_bpb"]  # always shown
    assert differing[2:] == ["dataset", "depth", "device_batch_size", "eval_every", "matrix_lr", "num_iterations"]
    mixture = page.locator('#compare-fields tr[data-field="dataset mixture"] td')
    expect(mixture.nth(1)).to_contain_text("gsm8k 25.0 % · shakespeare 75.0 %")
    expect(mixture.nth(2)).to_contain_text("shakespeare 100.0 %")
    depth = page.locator('#compare-fields tr[data-field="depth"] td')
    expect(depth.nth(1)).to_have_text("4")
    expect(depth.nth(2)).to_have_text("6")
    evals = page.locator("#compare-evals tbody tr")
    expect(evals).to_have_count(1)
    expect(evals.first).to_contain_text("1.2345")


def test_the_try_the_model_box_shows_a_completion(page, server, tmp_path):
    spec = small_train_spec(tmp_path, num_iterations=20, eval_every=5)
    job_id = insert_train_job(server.data_dir, spec, train_metrics(20, 5), JobState.succeeded)
    add_checkpoint(server.data_dir, job_id, spec, step=20, docs=shakespeare_docs(SHARED_DATA)[:400])
    page.goto(f"/#/jobs/{job_id}")
    expect(page.locator("#job-state")).to_have_text("succeeded")
    page.get_by_label("Prompt").fill("ROMEO:")
    page.get_by_label("Tokens").fill("16")
    page.get_by_role("button", name="Sample").click()
    output = page.locator("#try-output")
    expect(output).to_be_visible(timeout=90_000)
    expect(output.locator("b")).to_have_text("ROMEO:")
    assert len(output.inner_text()) > len("ROMEO:")
    expect(page.locator("#try-status")).to_contain_text("16 tokens from step 20")

    page.get_by_label("Prompt").fill("word " * 400)  # longer than the model's 256 tokens: refused, with the reason
    page.get_by_role("button", name="Sample").click()
    expect(page.locator("#try-error")).to_contain_text("prompts.0: the prompt is")
