"""The dashboard in headless Chromium against the running service (with an API token): the job list follows a
running conversion, a conversion's page shows its shards, a training's page draws its curves (growing while it
runs), and the page's buttons cancel and re-submit.

Needs Debian's `chromium` at /usr/bin/chromium (driven by Playwright; no downloaded browser). Training jobs are
written through the store (tests/storedjobs.py) rather than trained, to keep these tests to seconds.
"""

import re

import pytest
from playwright.sync_api import expect, sync_playwright

from app.jobs.models import JobState

from browserutil import launch
from serverutil import SHARED_DATA, long_conversion, start_server, wait_for_state
from storedjobs import add_train_job, advance_train_job, insert_train_job, small_train_spec, train_metrics

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
