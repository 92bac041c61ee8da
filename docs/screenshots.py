"""Take the dashboard screenshots of the README: docs/dashboard.png, docs/job-convert.png, docs/dataset.png,
docs/job-train.png and docs/compare.png.

    .venv/bin/python docs/screenshots.py

Runs the real service (the API and one worker) over a temporary data dir, converts the shared test data, trains two
tiny models on CPU (one on Shakespeare alone, one on a mixture with GSM8K), evaluates both on Shakespeare's validation
shard, samples from one in its "try the model" box and photographs the pages in headless Chromium
(/usr/bin/chromium).
"""

import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent / "tests"))

from browserutil import launch  # noqa: E402
from serverutil import SHARED_DATA, shakespeare_jsonl, start_server, wait_for_state, wait_until  # noqa: E402

TRAIN_SPEC = {
    "tokenizer": {"vocab_size": 1024, "max_chars": 600_000},
    "depth": 2,
    "head_dim": 64,
    "max_seq_len": 128,
    "device_batch_size": 8,
    "num_iterations": 60,
    "eval_every": 10,
    "eval_tokens": 4096,
    "warmup_steps": 2,
    "nproc_per_node": 1,
    "device": "cpu",
}


def convert(client, name: str, paths: list[str], **options) -> dict:
    spec = {"name": name, "sources": [{"type": "files", "paths": paths, **options.pop("source", {})}], **options}
    return client.post("/jobs/convert", json=spec).raise_for_status().json()


def train(server, dataset: str) -> str:
    """A train job over HTTP, run by the service's worker: its id, once it has succeeded."""
    job = server.client.post("/jobs/train", json={**TRAIN_SPEC, "dataset": dataset}).raise_for_status().json()
    return wait_for_state(server.client, job["id"], "succeeded", timeout=600)["id"]


def shoot_dataset(page, job_id: str) -> None:
    """docs/dataset.png: a mixture's dataset view, on its second sample."""
    page.goto(f"/#/jobs/{job_id}")
    page.locator("#sample-where").filter(has_text="line").wait_for()
    page.click("#sample-next")
    page.locator("#sample-position").filter(has_text="document 2").wait_for()
    page.locator("#dataset-section").screenshot(path=DOCS / "dataset.png")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, start_server(Path(tmp) / "data", workers=1) as server:
        client = server.client
        gsm8k = convert(
            client,
            "gsm8k",
            [str(SHARED_DATA / "jsonl" / "gsm8k.jsonl")],
            chars_per_shard=100_000,
            source={"text_template": "{question}\n{answer}"},
        )
        corpus = shakespeare_jsonl(Path(tmp) / "shakespeare.jsonl", copies=10)
        shakespeare = convert(client, "shakespeare", [str(corpus)], max_docs=12_000, chars_per_shard=250_000)
        for job in (gsm8k, shakespeare):
            wait_for_state(client, job["id"], "succeeded")
        mixture = client.post(
            "/jobs/convert",
            json={
                "name": "shakespeare-gsm8k",
                "sources": [
                    {"type": "files", "paths": [str(corpus)], "weight": 3.0},
                    {
                        "type": "files",
                        "paths": [str(SHARED_DATA / "jsonl" / "gsm8k.jsonl")],
                        "text_template": "{question}\n{answer}",
                        "weight": 1.0,
                    },
                ],
                "max_docs": 12_000,
                "chars_per_shard": 250_000,
            },
        ).raise_for_status()
        wait_for_state(client, mixture.json()["id"], "succeeded")
        train_id = train(server, shakespeare["id"])
        mixture_train_id = train(server, mixture.json()["id"])
        for body in ({"train_job": train_id}, {"train_job": mixture_train_id, "dataset": shakespeare["id"]}):
            evaluation = client.post("/jobs/eval", json=body).raise_for_status().json()
            wait_for_state(client, evaluation["id"], "succeeded", timeout=300)

        cancelled = convert(client, "cancelled-run", [str(corpus)], chars_per_shard=20_000)
        wait_for_state(client, cancelled["id"], "running")
        client.post(f"/jobs/{cancelled['id']}/cancel")
        wait_for_state(client, cancelled["id"], "cancelled")
        running = convert(
            client,
            "shakespeare-x10",
            [str(corpus)],
            max_docs=72_000,
            chars_per_shard=20_000,
            row_group_size=16,
            shuffle_buffer=2000,
        )

        with sync_playwright() as playwright:
            browser = launch(playwright)
            page = browser.new_page(base_url=server.base_url, viewport={"width": 1280, "height": 720})
            page.goto("/")
            wait_until(
                lambda: 0.3 < ((client.get(f"/jobs/{running['id']}").json()["progress"] or {}).get("fraction") or 0),
                timeout=120,
                what="the conversion a third done",
            )
            page.wait_for_timeout(1600)  # one refresh of the list
            page.screenshot(path=DOCS / "dashboard.png")

            page.goto(f"/#/jobs/{shakespeare['id']}")
            page.locator("#manifest tbody tr").first.wait_for()
            page.screenshot(path=DOCS / "job-convert.png", full_page=True)

            shoot_dataset(page, mixture.json()["id"])

            page.goto(f"/#/jobs/{train_id}")
            page.locator("#loss-chart polyline").wait_for()
            page.get_by_label("Prompt").fill("ROMEO:")
            page.get_by_role("button", name="Sample").click()
            page.locator("#try-output").wait_for(timeout=120_000)
            page.locator("#evals tbody tr").first.wait_for()
            page.screenshot(path=DOCS / "job-train.png", full_page=True)

            page.goto(f"/#/compare?ids={train_id},{mixture_train_id}")
            page.locator("#compare-evals tbody tr").nth(1).wait_for()
            page.screenshot(path=DOCS / "compare.png", full_page=True)
            browser.close()
        wait_for_state(client, running["id"], "succeeded", timeout=120)


if __name__ == "__main__":
    main()
