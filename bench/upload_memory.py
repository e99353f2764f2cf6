"""Peak Python memory while the browser's upload forms handle a ~50 MB JSONL file that is refused.

    .venv/bin/python bench/upload_memory.py --mb 50

Creates the database ``rlhf_bench_upload`` on the local PostgreSQL (``BENCH_PG``), migrates it, makes a
project, a researcher and two policies, then POSTs one file per form through Django's test client: the
gold, policy-data, arena and start-round uploads. Each file is ``--mb`` MB of lines that are refused (a
gold line naming a prompt that does not exist at line 1; prompts with an unknown key at the end for the
others, so every line before it is read and parsed). The multipart body is built before measuring; the
figure is ``tracemalloc``'s peak of Python allocations during the request (Django streams the upload to a
temporary file on disk; what is measured is what the view holds in memory), after a warm-up request per
page. Nothing may be written.
"""
import argparse
import json
import os
import sys
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")
DB_NAME = "rlhf_bench_upload"


def setup() -> None:
    import psycopg

    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    os.environ.update(DATABASE_URL=f"{PG}/{DB_NAME}", DJANGO_SETTINGS_MODULE="webapp.settings.local",
                      DJANGO_DEBUG="0", DJANGO_ALLOWED_HOSTS="testserver")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _file(mb: int, line: bytes, last: bytes) -> bytes:
    return line * (mb * 1_000_000 // len(line)) + last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=50)
    args = parser.parse_args()
    setup()
    from django.contrib.auth.models import User
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.test import Client
    from django.test.client import BOUNDARY, FakePayload, encode_multipart

    from annotation.models import Membership, Project
    from training.models import ModelArtifact

    researcher = User.objects.create_user("res", password="pw-res-bench")
    project = Project.objects.create(slug="bench", name="bench", k=2)
    Membership.objects.create(project=project, user=researcher, role=Membership.Role.RESEARCHER)
    policies = [ModelArtifact.objects.create(project=project, kind="policy", name=f"p{i}", path=f"bench/p{i}")
                for i in range(2)]
    client = Client()
    client.force_login(researcher)
    prompt = json.dumps({"prompt": "x" * 400}).encode() + b"\n"
    bad = json.dumps({"prompt": "x", "unknown": 1}).encode() + b"\n"
    forms = [
        ("gold", "/p/bench/quality/gold/", {}, "file",
         _file(args.mb, json.dumps({"prompt_id": 10**9, "ranking": [[0], [1]]}).encode() + b"\n", b"")),
        ("policy-data", "/training/projects/bench/lineage/import/", {}, "file", _file(args.mb, prompt, bad)),
        ("arena", "/p/bench/arena/create/", {"name": "a", "model_a": policies[0].pk, "model_b": policies[1].pk},
         "file", _file(args.mb, prompt, b"[" * 100 + b"\n")),
        ("start-round", "/training/projects/bench/lineage/start-round/",
         {"policy": policies[0].pk, "temperature": 1, "top_p": 1, "max_new_tokens": 8, "seed": 0}, "prompts_file",
         _file(args.mb, prompt, bad)),
    ]
    for page in ("/p/bench/quality/", "/training/projects/bench/lineage/", "/p/bench/arena/"):
        client.get(page)  # warm-up: the first request imports every view module (not the upload's cost)
    print(f"{args.mb} MB uploads, refused; peak Python allocations during the request (tracemalloc)")
    for name, url, fields, field, content in forms:
        body = encode_multipart(BOUNDARY, {**fields, field: SimpleUploadedFile("f.jsonl", content)})
        payload = FakePayload(body)  # the request body, in memory before measuring (a socket in production)
        tracemalloc.start()
        response = client.request(PATH_INFO=url, REQUEST_METHOD="POST", CONTENT_LENGTH=str(len(body)),
                                  CONTENT_TYPE=f"multipart/form-data; boundary={BOUNDARY}", **{"wsgi.input": payload})
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"{name:12s} {len(content) / 1e6:6.1f} MB file  HTTP {response.status_code}  peak {peak / 2**20:7.1f} MiB")
        del body, payload
    written = sum(model.objects.count() for model in _written_models())
    print(f"rows written by the refused uploads: {written}")


def _written_models():
    from lab.models import Arena
    from annotation.quality.models import GoldRanking
    from training.models import Demonstration, PoolPrompt, TrainingRun

    return [Arena, GoldRanking, Demonstration, PoolPrompt, TrainingRun]


if __name__ == "__main__":
    main()
