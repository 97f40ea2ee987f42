"""flowd_client: a one-file Python client for the flowd HTTP API.

Needs requests and numpy (Debian: python3-requests, python3-numpy); pandas
only for the DataFrame conveniences.  Arrays go over the wire as .npy
(float32), so scoring a million rows costs no JSON.

    import flowd_client
    c = flowd_client.Client("http://127.0.0.1:8080", token=None)
    lp = c.log_prob("moons", x)                  # numpy (n,) float32
    s = c.sample("moons", 1000, seed=1)          # numpy (1000, D)
    z, log_det = c.encode("moons", x)
    ds = c.upload_dataset("pts", x)              # or a pandas DataFrame
    job = c.submit_job({"model": "m2", "dataset": {"id": ds["id"]},
                        "flow": {"preset": "nsf"}, "train": {"epochs": 20}})
    c.wait(job["id"], progress=True)
    curve = c.loss_curve(job["id"], as_frame=True)

Every error of the server raises a FlowdError subclass carrying the
server's status, stable code, message and details (NotFound, InvalidInput,
Unauthenticated, PermissionDenied, Conflict, PayloadTooLarge, Overloaded,
...); a connection failure raises requests' own ConnectionError.
"""

import io
import json
import sys
import time

import numpy as np
import requests

__version__ = "0.1.0"

__all__ = ["Client", "FlowdError", "BadRequest", "Unauthenticated", "PermissionDenied", "NotFound",
           "MethodNotAllowed", "Conflict", "PayloadTooLarge", "UnsupportedMediaType", "NotAcceptable",
           "InvalidInput", "Overloaded", "InternalError", "JobFailed"]


class FlowdError(Exception):
    """An error answer: status (HTTP), code (flowd's stable error code),
    message, details (a dict) and request_id (X-Request-Id)."""

    def __init__(self, status, code, message, details=None, request_id=None):
        super().__init__("%s (%d): %s" % (code, status, message))
        self.status, self.code, self.message = status, code, message
        self.details = details or {}
        self.request_id = request_id


class BadRequest(FlowdError): pass             # 400 invalid_json, invalid_argument
class Unauthenticated(FlowdError): pass        # 401
class PermissionDenied(FlowdError): pass       # 403
class NotFound(FlowdError): pass               # 404
class MethodNotAllowed(FlowdError): pass       # 405
class NotAcceptable(FlowdError): pass          # 406
class Conflict(FlowdError): pass               # 409
class PayloadTooLarge(FlowdError): pass        # 413
class UnsupportedMediaType(FlowdError): pass   # 415
class InvalidInput(FlowdError): pass           # 422
class Overloaded(FlowdError): pass             # 429, 503 (retry after retry_after seconds)
class InternalError(FlowdError): pass          # 500, 507


class JobFailed(Exception):
    """wait() on a job that ended failed or cancelled; .job is its record."""

    def __init__(self, job):
        super().__init__("job %s %s: %s" % (job.get("id"), job.get("state"), job.get("error", "")))
        self.job = job


_BY_CODE = {
    "invalid_json": BadRequest, "invalid_argument": BadRequest, "unauthenticated": Unauthenticated,
    "permission_denied": PermissionDenied, "not_found": NotFound, "method_not_allowed": MethodNotAllowed,
    "not_acceptable": NotAcceptable, "conflict": Conflict, "payload_too_large": PayloadTooLarge,
    "unsupported_media_type": UnsupportedMediaType, "invalid_input": InvalidInput,
    "overloaded": Overloaded, "internal": InternalError,
}
_BY_STATUS = {400: BadRequest, 401: Unauthenticated, 403: PermissionDenied, 404: NotFound,
              405: MethodNotAllowed, 406: NotAcceptable, 409: Conflict, 413: PayloadTooLarge,
              415: UnsupportedMediaType, 422: InvalidInput, 429: Overloaded, 503: Overloaded}

NPY = "application/x-npy"
TERMINAL = ("succeeded", "failed", "cancelled")


def _raise_for(resp):
    if resp.status_code < 400:
        return
    code, message, details = None, resp.text.strip() or resp.reason, {}
    try:
        body = resp.json()
        err = body.get("error")
        if isinstance(err, dict):
            code, message, details = err.get("code"), err.get("message", message), err.get("details") or {}
        elif isinstance(err, str):  # the standard protocols' {"error": "message"}
            message = err
    except ValueError:
        pass
    cls = _BY_CODE.get(code) or _BY_STATUS.get(resp.status_code) or (
        InternalError if resp.status_code >= 500 else FlowdError)
    e = cls(resp.status_code, code or "http_%d" % resp.status_code, message, details,
            resp.headers.get("X-Request-Id"))
    if cls is Overloaded:
        e.retry_after = float(resp.headers.get("Retry-After", "1"))
    raise e


def _npy_bytes(a):
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def _npy_array(data):
    return np.load(io.BytesIO(data), allow_pickle=False)


def _rows(x, what="x"):
    """x as a C-ordered float32 (n, d) array: a 1-D array is one row."""
    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError("%s must be a 2-D array of rows, got shape %s" % (what, a.shape))
    if not np.all(np.isfinite(a)):
        raise ValueError("%s holds NaN or infinity" % what)
    return a


class Client:
    """A flowd server at url (e.g. "http://127.0.0.1:8080"); token: a bearer
    token (read or write scope) when the server uses tokens; timeout in
    seconds per request."""

    def __init__(self, url="http://127.0.0.1:8080", token=None, timeout=60.0, session=None):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.http = session or requests.Session()

    # ---- plumbing --------------------------------------------------------------------
    def _request(self, method, path, json_body=None, data=None, ctype=None, accept=None, params=None,
                 stream=False):
        headers = {}
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        if ctype:
            headers["Content-Type"] = ctype
        if accept:
            headers["Accept"] = accept
        if json_body is not None:
            data = json.dumps(json_body, allow_nan=False).encode()
            headers["Content-Type"] = "application/json"
        resp = self.http.request(method, self.url + path, data=data, headers=headers, params=params,
                                 timeout=self.timeout, stream=stream)
        _raise_for(resp)
        return resp

    def _json(self, method, path, body=None, params=None):
        resp = self._request(method, path, json_body=body, params=params)
        return resp.json() if resp.content else None

    def _rows_request(self, model, op, field, x, context, version):
        """POST rows to an inference route, answered as .npy.  Without a
        context the rows travel as .npy; with one as JSON ("context": one
        row for every input, or one per input), which holds for any
        conditional model whatever the layout of its training rows."""
        params = {"version": version} if version is not None else None
        path = "/v1/models/%s/%s" % (model, op)
        if context is None:
            return self._request("POST", path, data=_npy_bytes(x), ctype=NPY, accept=NPY,
                                 params=params)
        c = _rows(context, "context")
        if c.shape[0] != 1 and c.shape[0] != x.shape[0]:
            raise ValueError("context has %d rows for %d rows of x" % (c.shape[0], x.shape[0]))
        body = {field: x.tolist(), "context": c[0].tolist() if c.shape[0] == 1 else c.tolist()}
        if version is not None:
            body["version"] = version
        return self._request("POST", path, json_body=body, accept=NPY)

    # ---- operations --------------------------------------------------------------------
    def health(self):
        return self._json("GET", "/healthz")

    def ready(self):
        """True when GET /readyz answers 200."""
        try:
            self._request("GET", "/readyz")
            return True
        except Overloaded:
            return False

    def version(self):
        """The server's build, schema version and BLAS (GET /v1/version)."""
        return self._json("GET", "/v1/version")

    def metrics_text(self):
        return self._request("GET", "/metrics").text

    # ---- models --------------------------------------------------------------------------
    def models(self):
        """[{"name", "latest_version", "dim", "context_dim", "created_at"}, ...]"""
        return self._json("GET", "/v1/models")["models"]

    def model(self, name):
        """The model with its versions, config, preprocessing and metrics."""
        return self._json("GET", "/v1/models/%s" % name)

    def versions(self, name):
        """The model's versions (oldest first), each a dict."""
        return self.model(name)["versions"]

    def delete_model(self, name):
        self._request("DELETE", "/v1/models/%s" % name)

    def download(self, name, version, path=None):
        """The checkpoint file of a version: bytes, or written to path."""
        data = self._request("GET", "/v1/models/%s/versions/%d/checkpoint" % (name, version)).content
        if path is None:
            return data
        with open(path, "wb") as f:
            f.write(data)
        return path

    # ---- inference -------------------------------------------------------------------------
    def log_prob(self, model, x, context=None, version=None):
        """log p(x) of each row of x (n, D): a float32 array (n,), NaN for
        rows outside the model's support.  context: (n, C) or one row (C,)
        for a conditional model."""
        resp = self._rows_request(model, "log_prob", "inputs", _rows(x), context, version)
        return _npy_array(resp.content).reshape(-1)

    def sample(self, model, n, seed=None, temperature=1.0, context=None, version=None):
        """n samples as a float32 array (n, D)."""
        body = {"n": int(n), "temperature": temperature}
        if seed is not None:
            body["seed"] = int(seed)
        if context is not None:
            c = _rows(context, "context")
            # one row is one vector for every sample; else one row per sample
            body["context"] = c[0].tolist() if c.shape[0] == 1 else c.tolist()
        if version is not None:
            body["version"] = int(version)
        resp = self._request("POST", "/v1/models/%s/sample" % model, json_body=body, accept=NPY)
        return _npy_array(resp.content)

    def _code(self, op, model, rows, context, version):
        field = "inputs" if op == "encode" else "latents"
        resp = self._rows_request(model, op, field, _rows(rows), context, version)
        out = _npy_array(resp.content)
        return out[:, :-1], out[:, -1]

    def encode(self, model, x, context=None, version=None):
        """(z, log_det): z = f(x) (n, D) and log|det df/dx| (n,)."""
        return self._code("encode", model, x, context, version)

    def decode(self, model, z, context=None, version=None):
        """(x, log_det): x = f^-1(z) (n, D) and log|det df^-1/dz| (n,)."""
        return self._code("decode", model, z, context, version)

    def evaluate(self, model, body):
        """POST /v1/models/{model}/evaluate with body (a dict)."""
        return self._json("POST", "/v1/models/%s/evaluate" % model, body)

    # ---- datasets -----------------------------------------------------------------------------
    def upload_dataset(self, name, data, shape=None):
        """Store rows as a dataset: a numpy array (n, D), a pandas DataFrame
        (its numeric columns; the index is not a feature and is not sent),
        or a path to a CSV / .npy / IDX file.  Returns {"id", "name",
        "rows", "dim", "sha256"}."""
        params = {"name": name}
        if shape is not None:
            params["shape"] = ",".join(str(int(s)) for s in shape)
        if isinstance(data, str):
            ctype = NPY if data.endswith(".npy") else "text/csv" if data.endswith(".csv") \
                else "application/octet-stream"
            with open(data, "rb") as f:
                return self._request("POST", "/v1/datasets", data=f, ctype=ctype, params=params).json()
        if hasattr(data, "to_numpy") and hasattr(data, "columns"):  # a DataFrame
            data = data.to_numpy(dtype=np.float32)
        body = _npy_bytes(_rows(data, "data"))
        return self._request("POST", "/v1/datasets", data=body, ctype=NPY, params=params).json()

    def datasets(self):
        return self._json("GET", "/v1/datasets")["datasets"]

    def dataset(self, dataset_id):
        return self._json("GET", "/v1/datasets/%s" % dataset_id)

    def delete_dataset(self, dataset_id):
        self._request("DELETE", "/v1/datasets/%s" % dataset_id)

    # ---- jobs ----------------------------------------------------------------------------------
    def submit_job(self, job):
        """POST /v1/jobs with the job dict (schema/job.schema.json):
        {"id", "state"}."""
        return self._json("POST", "/v1/jobs", job)

    def jobs(self, state=None, limit=None):
        """Jobs newest first, every page followed."""
        out, token = [], None
        while True:
            params = {k: v for k, v in (("state", state), ("limit", limit), ("page_token", token)) if v}
            page = self._json("GET", "/v1/jobs", params=params)
            out += page["jobs"]
            token = page.get("next_page_token")
            if not token or (limit and len(out) >= limit):
                return out

    def job(self, job_id):
        return self._json("GET", "/v1/jobs/%s" % job_id)

    def cancel(self, job_id):
        return self._json("POST", "/v1/jobs/%s/cancel" % job_id)

    def wait(self, job_id, timeout=None, poll=0.5, progress=False):
        """Polls the job until it ends; returns its record when it
        succeeded, raises JobFailed when it failed or was cancelled, and
        TimeoutError after timeout seconds.  progress: True prints one line
        per change to stderr, or a callable gets each job record."""
        t0, last = time.monotonic(), None
        while True:
            j = self.job(job_id)
            p = j.get("progress") or {}
            key = (j["state"], p.get("step"))
            if progress and key != last:
                if callable(progress):
                    progress(j)
                else:
                    print("job %s %s: epoch %s/%s step %s train_loss %s val_loss %s" % (
                        j["id"], j["state"], p.get("epoch"), p.get("epochs"), p.get("step"),
                        p.get("train_loss"), p.get("val_loss")), file=sys.stderr)
            last = key
            if j["state"] in TERMINAL:
                if j["state"] != "succeeded":
                    raise JobFailed(j)
                return j
            if timeout is not None and time.monotonic() - t0 > timeout:
                raise TimeoutError("job %s still %s after %.0f s" % (job_id, j["state"], timeout))
            time.sleep(poll)

    def loss_curve(self, job_id, as_frame=False):
        """Every logged step of the job ({"step", "epoch", "train_loss",
        "val_loss", "lr", "grad_norm", "time"}), all pages: a list of dicts,
        or a pandas DataFrame with as_frame=True."""
        rows, after = [], None
        while True:
            params = {"limit": 1000}
            if after is not None:
                params["after_step"] = after
            page = self._json("GET", "/v1/jobs/%s/metrics" % job_id, params=params)
            rows += page["metrics"]
            nxt = page.get("next_after_step")
            if not page["metrics"] or nxt is None or nxt == after:
                break
            after = nxt
        if as_frame:
            import pandas as pd
            return pd.DataFrame(rows, columns=["step", "epoch", "train_loss", "val_loss", "lr", "grad_norm", "time"])
        return rows

    # ---- the Open Inference Protocol v2 -------------------------------------------------------
    def infer_v2(self, model, inputs, op="log_prob", version=None, **params):
        """POST /v2/models/{model}[/versions/{v}]/infer: inputs is a dict of
        name -> array ("x", "z", "context"); returns a dict of output name
        -> numpy array."""
        tensors = []
        for name, a in inputs.items():
            a = np.asarray(a, dtype=np.float32)
            tensors.append({"name": name, "shape": list(a.shape), "datatype": "FP32",
                            "data": a.reshape(-1).tolist()})
        path = "/v2/models/%s%s/infer" % (model, "" if version is None else "/versions/%d" % version)
        body = {"inputs": tensors, "parameters": dict(params, op=op)}
        out = self._json("POST", path, body)
        return {t["name"]: np.array([np.nan if v is None else v for v in t["data"]],
                                    dtype=np.float32).reshape(t["shape"]) for t in out["outputs"]}
