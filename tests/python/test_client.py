"""tests/python/test_client.py: client/python/flowd_client.py against the
real daemon.  Started by tests/server/test_python.c, which runs flowd on a
fresh database with two imported models ("m": D=2; "c": D=2 with one
context column) and passes its URL in FLOWD_URL.  Every check compares the
client's numpy answers with the server's own JSON answers (another parser,
another encoding), so a wrong .npy path or a swapped column fails.

Run by hand:  FLOWD_URL=http://127.0.0.1:8080 /usr/bin/python3 tests/python/test_client.py
"""

import io
import os
import sys
import unittest

import numpy as np
import requests

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "client", "python"))
import flowd_client  # noqa: E402

URL = os.environ.get("FLOWD_URL", "http://127.0.0.1:8080")
X = np.array([[0.5, 0.25], [-1.0, 2.0], [0.0, 0.0], [3.0, -0.75]], dtype=np.float32)
CTX = np.array([[0.5], [-1.0], [2.0], [0.0]], dtype=np.float32)


def v1(path, body):
    """The server's own JSON answer (no client involved)."""
    r = requests.post(URL + path, json=body, timeout=30)
    r.raise_for_status()
    return r.json()


class ClientTest(unittest.TestCase):
    c = flowd_client.Client(URL)

    def test_log_prob_matches_json(self):
        lp = self.c.log_prob("m", X)
        self.assertEqual(lp.shape, (4,))
        self.assertEqual(lp.dtype, np.float32)
        ref = np.array(v1("/v1/models/m/log_prob", {"inputs": X.tolist()})["log_prob"], dtype=np.float64)
        np.testing.assert_allclose(lp, ref, rtol=1e-6)
        # one row as a 1-D array, and float64 input
        np.testing.assert_allclose(self.c.log_prob("m", X[1].astype(np.float64)), ref[1:2], rtol=1e-6)
        np.testing.assert_allclose(self.c.log_prob("m", X, version=1), ref, rtol=1e-6)

    def test_context_over_npy(self):
        lp = self.c.log_prob("c", X, context=CTX)
        ref = v1("/v1/models/c/log_prob", {"inputs": X.tolist(), "context": CTX.tolist()})["log_prob"]
        np.testing.assert_allclose(lp, ref, rtol=1e-6)
        one = self.c.log_prob("c", X, context=CTX[0])
        ref1 = v1("/v1/models/c/log_prob", {"inputs": X.tolist(), "context": CTX[0].tolist()})["log_prob"]
        np.testing.assert_allclose(one, ref1, rtol=1e-6)
        self.assertGreater(np.max(np.abs(one - lp)), 1e-3)  # the context is used
        with self.assertRaises(flowd_client.InvalidInput) as e:
            self.c.log_prob("c", X)  # a conditional model without context
        self.assertEqual(e.exception.status, 422)
        self.assertEqual(e.exception.code, "invalid_input")
        self.assertIn("context", e.exception.message)

    def test_sample_encode_decode(self):
        s = self.c.sample("m", 50, seed=3)
        self.assertEqual(s.shape, (50, 2))
        np.testing.assert_array_equal(s, self.c.sample("m", 50, seed=3))
        ref = v1("/v1/models/m/sample", {"n": 50, "seed": 3})["samples"]
        np.testing.assert_allclose(s, ref, rtol=1e-6)
        sc = self.c.sample("c", 4, seed=1, context=[1.0])
        self.assertEqual(sc.shape, (4, 2))
        z, ld = self.c.encode("m", X)
        ref = v1("/v1/models/m/encode", {"inputs": X.tolist()})
        np.testing.assert_allclose(z, ref["latents"], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(ld, ref["log_det"], rtol=1e-6, atol=1e-7)
        xb, ldb = self.c.decode("m", z)
        np.testing.assert_allclose(xb, X, atol=1e-5)
        np.testing.assert_allclose(ldb, -ld, atol=1e-5)
        zc, _ = self.c.encode("c", X, context=CTX)
        refc = v1("/v1/models/c/encode", {"inputs": X.tolist(), "context": CTX.tolist()})["latents"]
        np.testing.assert_allclose(zc, refc, rtol=1e-6, atol=1e-7)

    def test_v2_infer(self):
        out = self.c.infer_v2("m", {"x": X})
        np.testing.assert_allclose(out["log_prob"], self.c.log_prob("m", X), rtol=1e-6)

    def test_typed_errors(self):
        with self.assertRaises(flowd_client.NotFound) as e:
            self.c.log_prob("nosuch", X)
        self.assertEqual((e.exception.status, e.exception.code), (404, "not_found"))
        self.assertTrue(e.exception.request_id)
        with self.assertRaises(flowd_client.InvalidInput) as e:
            self.c.log_prob("m", np.zeros((2, 3)))
        self.assertEqual(e.exception.details.get("expected_width"), 2)
        with self.assertRaises(flowd_client.NotFound):
            self.c.job("999999")
        with self.assertRaises(flowd_client.NotFound):
            self.c.infer_v2("nosuch", {"x": X})  # the v2 shape {"error": "..."} too
        with self.assertRaises(ValueError):
            self.c.log_prob("m", np.array([[np.nan, 1.0]]))

    def test_datasets(self):
        rng = np.random.default_rng(0)
        a = rng.normal(size=(100, 3)).astype(np.float32)
        ds = self.c.upload_dataset("arr", a)
        self.assertEqual((ds["rows"], ds["dim"]), (100, 3))
        import pandas as pd
        df = pd.DataFrame(a, columns=["a", "b", "c"], index=np.arange(100) + 1000)
        ds2 = self.c.upload_dataset("frame", df)
        self.assertEqual((ds2["rows"], ds2["dim"]), (100, 3))  # the index is not a column
        self.assertEqual(ds2["sha256"], ds["sha256"])
        ids = [d["id"] for d in self.c.datasets()]
        self.assertIn(ds["id"], ids)
        self.assertEqual(self.c.dataset(ds["id"])["rows"], 100)
        # pandas' to_csv() with its index: a clear 422, never a feature
        csv = df.to_csv().encode()
        r = requests.post(URL + "/v1/datasets", params={"name": "indexed"}, data=csv,
                          headers={"Content-Type": "text/csv"}, timeout=30)
        self.assertEqual(r.status_code, 422, r.text)
        self.assertEqual(r.json()["error"]["code"], "invalid_input")
        self.assertIn("index", r.json()["error"]["message"])
        self.assertEqual(requests.post(URL + "/v1/datasets", params={"name": "plain"},
                                       data=df.to_csv(index=False).encode(),
                                       headers={"Content-Type": "text/csv"}, timeout=30).json()["dim"], 3)
        self.c.delete_dataset(ds2["id"])
        with self.assertRaises(flowd_client.NotFound):
            self.c.dataset(ds2["id"])

    def test_job_wait_curve_models(self):
        rng = np.random.default_rng(1)
        ds = self.c.upload_dataset("blob", rng.normal(size=(600, 2)) * [1.0, 0.3])
        job = self.c.submit_job({"model": "py", "dataset": {"id": ds["id"]},
                                 "flow": {"preset": "realnvp", "depth": 2, "hidden": [8]},
                                 "train": {"epochs": 3, "batch_size": 64, "log_every": 1}})
        self.assertEqual(job["state"], "queued")
        seen = []
        done = self.c.wait(job["id"], timeout=60, poll=0.1, progress=seen.append)
        self.assertEqual(done["state"], "succeeded")
        self.assertTrue(seen and seen[-1]["state"] == "succeeded")
        curve = self.c.loss_curve(job["id"])
        self.assertGreater(len(curve), 3)
        steps = [r["step"] for r in curve]
        self.assertEqual(steps, sorted(steps))
        raw = requests.get(URL + "/v1/jobs/%s/metrics" % job["id"], params={"limit": 10000}, timeout=30).json()
        self.assertEqual(curve, raw["metrics"])
        frame = self.c.loss_curve(job["id"], as_frame=True)
        self.assertEqual(list(frame["step"]), steps)
        self.assertIn("train_loss", frame.columns)
        names = [m["name"] for m in self.c.models()]
        self.assertIn("py", names)
        self.assertEqual([v["version"] for v in self.c.versions("py")], [1])
        self.assertIn(str(job["id"]), [j["id"] for j in self.c.jobs()])
        self.assertTrue(self.c.download("py", 1).startswith(b"") and len(self.c.download("py", 1)) > 0)
        with self.assertRaises(flowd_client.Conflict):
            self.c.cancel(job["id"])
        self.c.delete_model("py")
        with self.assertRaises(flowd_client.NotFound):
            self.c.model("py")

    def test_failed_job_raises(self):
        job = self.c.submit_job({"model": "bad", "dataset": {"builtin": "moons", "n": 64},
                                 "flow": {"preset": "realnvp", "depth": 1, "hidden": [4]},
                                 "train": {"epochs": 1000, "batch_size": 32}})
        self.c.cancel(job["id"])
        with self.assertRaises(flowd_client.JobFailed) as e:
            self.c.wait(job["id"], timeout=30, poll=0.1)
        self.assertEqual(e.exception.job["state"], "cancelled")


if __name__ == "__main__":
    out = io.StringIO()
    res = unittest.main(exit=False, verbosity=2).result
    sys.exit(0 if res.wasSuccessful() and res.testsRun > 0 else 1)
