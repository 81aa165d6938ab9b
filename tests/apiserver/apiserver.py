#!/usr/bin/env python3
# WHAT THIS FIXTURE DOES NOT IMITATE. It is a test double for a Kubernetes 1.36 kube-apiserver,
# written from the apiserver's code and documented behaviour, not recorded from a running one: a
# test that passes here proves nothing about the items below.
#
# Transport and encodings
# - No HTTP/2 (ALPN offers only http/1.1), no h2c, no websockets, no SPDY, no exec/attach/logs.
# - Request bodies: JSON only; YAML and protobuf bodies get 415 (a real server takes both).
#   Responses are always JSON: Accept is ignored (no protobuf, no CBOR, no `as=Table`), nothing
#   is gzip-compressed, and field order is not Go's (custom resources are not key-sorted).
# - No aggregated discovery (apidiscovery.k8s.io/v2): /api, /apis and /apis/G/V answer the
#   legacy documents. No /openapi/v2 or /openapi/v3, no /metrics.
# - No API Priority and Fairness: the X-Kubernetes-Pf-* headers are sent, but nothing is queued
#   or throttled except by the restart sequence and injected faults. No 60 s request timeout.
# Authentication and authorization
# - Bearer tokens from --tokens only: no client certificates, no TokenReview, no OIDC, no
#   impersonation. Without a token: 401, as with --anonymous-auth=false (the real default is
#   true; pass --anonymous-auth and such requests run as system:anonymous and get 403).
# - RBAC is a fixed table per role (admin, imc-dispatcher, none) or the tokens file's inline
#   rules; no Role/ClusterRole/binding objects are served, no aggregation, no selector authz.
# Admission and validation
# - No admission webhooks: Knative's defaulting and validating webhooks for InMemoryChannel
#   (creator/lastModifier annotations, spec defaults, subscriber checks) do not run. No admission
#   plugin but NamespaceLifecycle's "the namespace must exist" (deleting a namespace removes it
#   at once, with no Terminating phase and without deleting what is in it). No ResourceQuota,
#   LimitRanger, OwnerReferencesPermissionEnforcement (inmemorychannels/finalizers is only an
#   RBAC name here), no garbage collector (ownerReferences never delete anything).
# - CRD schemas: the InMemoryChannel schema of Knative Eventing 1.2x: types, required, pruning
#   of unknown fields (Warning 299, or 400 with fieldValidation=Strict), dropping of nulls; no
#   formats, enums, patterns, min/max, CEL rules or ratcheting. EventType and EventPolicy are
#   served with schemas that keep everything.
# - Built-in types: field types, unknown fields, MicroTime for Lease times, base64 of Secret
#   data, Lease spec numbers, immutable ConfigMaps/Secrets, metadata.name and label values;
#   nothing else of their validation (Event fields are not checked at all). Duplicate JSON keys
#   are not reported (the last one wins). Client-sent managedFields are ignored.
# Requests
# - No server-side apply: application/apply-patch+yaml gets 415 (a real server applies it).
#   Strategic merge patch (built-in types only) knows the merge keys of ownerReferences and
#   finalizers and the $patch/$retainKeys/$setElementOrder/$deleteFromPrimitiveList directives,
#   which is all ConfigMap, Secret, Lease, Namespace and Event need.
# - managedFields: operation Update only, lists atomic in fieldsV1 (a real server tracks the keys
#   of built-in list-maps such as ownerReferences).
# - fieldSelector: metadata.name and metadata.namespace only (=, ==, !=), as for CRDs without
#   selectableFields. labelSelector: =, ==, !=, in, notin, exists, !exists.
# - list with resourceVersion=0 honours limit (a 1.36 watch cache may serve it whole). Paging,
#   resourceVersionMatch=Exact and continue tokens are served from the same bounded history as
#   watches (--history events): once compacted past, they are 410 Expired.
# - Watch: bookmarks every --bookmark-interval seconds when allowWatchBookmarks=true, and none
#   right before timeoutSeconds ends a watch (a real server sends one then). A watch that falls
#   behind the bounded history ends cleanly, as a watch cache ends a slow watcher. No watch under
#   the deprecated /watch/ prefix.
# - Restart: objects and the resourceVersion counter survive (etcd does); the restart writes the
#   fixture's own identity Lease (kube-system/apiserver-fixture, as a starting kube-apiserver
#   renews its Lease), then compacts history. The 503 and 429 phases answer every resource
#   request by default; a real 1.36 server answers 503 only for paths not installed yet (CRD
#   groups: unavailable_scope "crd") and, with ResilientWatchCacheInitialization, 429 only to
#   watches and to reads it cannot pass to etcd (initializing_scope "watch").
# - Not served: pods, services, endpoints, deployments, serviceaccounts and their token
#   subresource (TokenRequest), RBAC objects, CRDs themselves, /scale, /finalize, proxy, eviction.
#   Their paths answer 404 after authorization, like any path the fixture does not know (plain
#   "404 page not found" outside the served API groups, a Status inside them).
# - deletionGracePeriodSeconds, propagationPolicy and orphaning are accepted and ignored.
"""A test Kubernetes API server, speaking the real wire protocol on loopback.

One process, HTTPS only. See tests/src/apiserver.rs for the Rust harness and the comment above
for what it does not imitate. Usage:

  apiserver.py --port 0 --cert server.crt --key server.key --control-port 0 \
      --tokens tokens.json [--state objects.json] [--system-namespace knative-eventing]

It prints `LISTENING 127.0.0.1:PORT` then `CONTROL 127.0.0.1:PORT` on stdout, and one line per
request on stderr. The control port (plain HTTP, loopback, JSON, no auth) drives the fixture:
see ControlHandler below for its routes.
"""

import argparse
import base64
import binascii
import copy
import datetime
import json
import random
import re
import select
import socket
import ssl
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

KUBE_VERSION = {
    "major": "1",
    "minor": "36",
    "emulationMajor": "1",
    "emulationMinor": "36",
    "minCompatibilityMajor": "1",
    "minCompatibilityMinor": "35",
    "gitVersion": "v1.36.0",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-04-22T00:00:00Z",
    "goVersion": "go1.26.2",
    "compiler": "gc",
    "platform": "linux/amd64",
}

# ---------------------------------------------------------------------------------------------
# Small helpers


def now_time():
    """metav1.Time as the server writes it: UTC, whole seconds."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def dumps(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def json_type(v):
    """The type name go-openapi reports for a JSON value."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "integer" if v.is_integer() else "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def go_json_type(v):
    """The JSON type name Go's encoding/json names in an UnmarshalTypeError."""
    return {
        "null": "null",
        "boolean": "bool",
        "integer": "number",
        "number": "number",
        "string": "string",
        "array": "array",
        "object": "object",
    }[json_type(v)]


class Path:
    """A field path as apimachinery's field.Path prints it: a.b[0].c, map keys as [key]."""

    def __init__(self, parts=()):
        self.parts = tuple(parts)

    def child(self, name):
        return Path(self.parts + (("f", name),))

    def index(self, i):
        return Path(self.parts + (("i", i),))

    def key(self, k):
        return Path(self.parts + (("k", k),))

    def __str__(self):
        out = ""
        for kind, v in self.parts:
            if kind == "f":
                out += ("." if out else "") + v
            else:
                out += "[%s]" % v
        return out


class Raw:
    """A value printed as is in a field error (Go's %#v of a number, e.g. 0x0)."""

    def __init__(self, text):
        self.text = text


def fmt_value(v):
    if isinstance(v, Raw):
        return v.text
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    return json.dumps(dumps(v), ensure_ascii=False)


class FieldError:
    """apimachinery's field.Error: Type is the StatusCause reason."""

    LABELS = {
        "FieldValueRequired": "Required value",
        "FieldValueInvalid": "Invalid value",
        "FieldValueTypeInvalid": "Invalid value",
        "FieldValueForbidden": "Forbidden",
        "FieldValueNotSupported": "Unsupported value",
    }

    def __init__(self, type_, field, value=None, detail=""):
        self.type = type_
        self.field = str(field)
        self.value = value
        self.detail = detail

    def body(self):
        label = self.LABELS[self.type]
        if self.type in ("FieldValueRequired", "FieldValueForbidden"):
            s = label
        else:
            s = "%s: %s" % (label, fmt_value(self.value))
        if self.detail:
            s += ": " + self.detail
        return s

    def error(self):
        return "%s: %s" % (self.field, self.body()) if self.field else self.body()

    def cause(self):
        return {"reason": self.type, "message": self.body(), "field": self.field}


def aggregate(messages):
    uniq = []
    for m in messages:
        if m not in uniq:
            uniq.append(m)
    return uniq[0] if len(uniq) == 1 else "[" + ", ".join(uniq) + "]"


# ---------------------------------------------------------------------------------------------
# API errors, as metav1.Status objects


class ApiError(Exception):
    def __init__(self, code, reason, message, details=None, headers=None, list_meta=None, log=None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or []
        self.list_meta = list_meta
        self.log = log  # extra text for the request log only, never sent

    def status(self):
        s = {"kind": "Status", "apiVersion": "v1", "metadata": self.list_meta or {}}
        s["status"] = "Failure"
        if self.message:
            s["message"] = self.message
        if self.reason:
            s["reason"] = self.reason
        if self.details is not None:
            s["details"] = self.details
        s["code"] = self.code
        return s


def details_for(res, name=None, extra=None):
    d = {}
    if name:
        d["name"] = name
    if res is not None:
        if res.group:
            d["group"] = res.group
        d["kind"] = res.plural
    if extra:
        d.update(extra)
    return d


def err_not_found(res, name):
    return ApiError(404, "NotFound", '%s "%s" not found' % (res.qualified, name), details_for(res, name))


def err_already_exists(res, name):
    return ApiError(
        409, "AlreadyExists", '%s "%s" already exists' % (res.qualified, name), details_for(res, name)
    )


CONFLICT_TEXT = "the object has been modified; please apply your changes to the latest version and try again"


def err_conflict(res, name, text=CONFLICT_TEXT):
    return ApiError(
        409,
        "Conflict",
        'Operation cannot be fulfilled on %s "%s": %s' % (res.qualified, name, text),
        details_for(res, name),
    )


def err_invalid(res, name, errors, qkind=None):
    if qkind is None:
        qkind = res.qkind if res is not None else ""
    d = {}
    if name:
        d["name"] = name
    if res is not None:
        if res.group:
            d["group"] = res.group
        d["kind"] = res.kind
    d["causes"] = [e.cause() for e in errors]
    msg = '%s "%s" is invalid: %s' % (qkind, name or "", aggregate([e.error() for e in errors]))
    return ApiError(422, "Invalid", msg, d)


def err_bad_request(message):
    return ApiError(400, "BadRequest", message)


def err_internal(message):
    return ApiError(
        500,
        "InternalError",
        "Internal error occurred: %s" % message,
        {"causes": [{"message": message}]},
    )


def err_unsupported_media(types):
    return ApiError(
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: "
        + ", ".join(types),
    )


def err_method_not_allowed():
    return ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource", {})


def err_expired(message, list_meta=None):
    return ApiError(410, "Expired", message, None, list_meta=list_meta)


def err_too_many(message, retry):
    return ApiError(
        429, "TooManyRequests", message, {"retryAfterSeconds": retry}, headers=[("Retry-After", str(retry))]
    )


def err_unavailable(message, retry):
    return ApiError(
        503, "ServiceUnavailable", message, {"retryAfterSeconds": retry}, headers=[("Retry-After", str(retry))]
    )


def err_patch_invalid(detail):
    # jsonPatcher: errors.NewGenericServerResponse(422, ...): the library's text is not sent.
    return ApiError(
        422, "Invalid", "the server rejected our request due to an error in our request", {}, log=detail
    )


# ---------------------------------------------------------------------------------------------
# Schemas: a small structural-schema language. type None with preserve=True is "any JSON".


def S(fmt=None, go="string"):
    return {"type": "string", "format": fmt, "go": go}


def I(go="int64"):
    return {"type": "integer", "go": go}


def B():
    return {"type": "boolean", "go": "bool"}


def O(props=None, required=(), preserve=False, go=None):
    return {"type": "object", "properties": props or {}, "required": list(required), "preserve": preserve, "go": go}


def M(values, go="map[string]string"):
    return {"type": "object", "additional": values, "go": go}


def A(items, go="[]string"):
    return {"type": "array", "items": items, "go": go}


ANY = {"type": None, "preserve": True}
ANY_OBJECT = {"type": "object", "properties": {}, "required": [], "preserve": True}

OWNER_REF = O(
    {
        "apiVersion": S(),
        "kind": S(),
        "name": S(),
        "uid": S(),
        "controller": B(),
        "blockOwnerDeletion": B(),
    },
    go="OwnerReference",
)

OBJECT_META = O(
    {
        "name": S(),
        "generateName": S(),
        "namespace": S(),
        "selfLink": S(),
        "uid": S(),
        "resourceVersion": S(),
        "generation": I(),
        "creationTimestamp": ANY,
        "deletionTimestamp": ANY,
        "deletionGracePeriodSeconds": I(),
        "labels": M(S()),
        "annotations": M(S()),
        "ownerReferences": A(OWNER_REF, go="[]v1.OwnerReference"),
        "finalizers": A(S()),
        "managedFields": A(ANY, go="[]v1.ManagedFieldsEntry"),
    },
    go="ObjectMeta",
)


def top(props, go=None, preserve=False):
    p = {"apiVersion": S(), "kind": S(), "metadata": OBJECT_META}
    p.update(props)
    return O(p, go=go, preserve=preserve)


AUTH_STATUS = O({"serviceAccountName": S(), "serviceAccountNames": A(S())})
ADDRESS = O({"name": S(), "url": S(), "CACerts": S(), "audience": S()})
KREF = O({"apiVersion": S(), "kind": S(), "name": S(), "namespace": S()})

IMC_SCHEMA = top(
    {
        "spec": O(
            {
                "delivery": ANY_OBJECT,
                "subscribers": A(
                    O(
                        {
                            "delivery": ANY_OBJECT,
                            "generation": I(),
                            "name": S(),
                            "namespace": S(),
                            "replyUri": S(),
                            "replyCACerts": S(),
                            "replyAudience": S(),
                            "subscriberUri": S(),
                            "subscriberCACerts": S(),
                            "subscriberAudience": S(),
                            "uid": S(),
                            "auth": AUTH_STATUS,
                        }
                    )
                ),
            }
        ),
        "status": O(
            {
                "address": ADDRESS,
                "addresses": A(ADDRESS),
                "annotations": ANY_OBJECT,
                "conditions": A(
                    O(
                        {
                            "lastTransitionTime": S(),
                            "message": S(),
                            "reason": S(),
                            "severity": S(),
                            "status": S(),
                            "type": S(),
                        },
                        required=("type", "status"),
                    )
                ),
                "deadLetterChannel": KREF,
                "deadLetterSinkUri": S(),
                "deadLetterSinkCACerts": S(),
                "deadLetterSinkAudience": S(),
                "observedGeneration": I(),
                "policies": A(O({"apiVersion": S(), "name": S()})),
                "subscribers": A(
                    O(
                        {
                            "uid": S(),
                            "observedGeneration": I(),
                            "ready": S(),
                            "message": S(),
                            "auth": AUTH_STATUS,
                        }
                    )
                ),
            }
        ),
    }
)

OPEN_CR_SCHEMA = top({"spec": ANY_OBJECT, "status": ANY_OBJECT})

CONFIGMAP_SCHEMA = top(
    {"data": M(S()), "binaryData": M(S("byte", go="[]uint8"), go="map[string][]uint8"), "immutable": B()},
    go="ConfigMap",
)
SECRET_SCHEMA = top(
    {
        "data": M(S("byte", go="[]uint8"), go="map[string][]uint8"),
        "stringData": M(S()),
        "type": S(go="v1.SecretType"),
        "immutable": B(),
    },
    go="Secret",
)
LEASE_SCHEMA = top(
    {
        "spec": O(
            {
                "holderIdentity": S(),
                "leaseDurationSeconds": I("int32"),
                "acquireTime": S("micro-time", go="v1.MicroTime"),
                "renewTime": S("micro-time", go="v1.MicroTime"),
                "leaseTransitions": I("int32"),
                "strategy": S(go="v1.CoordinatedLeaseStrategy"),
                "preferredHolder": S(),
            },
            go="LeaseSpec",
        )
    },
    go="Lease",
)
NAMESPACE_SCHEMA = top(
    {
        "spec": O({"finalizers": A(S(go="v1.FinalizerName"), go="[]v1.FinalizerName")}, go="NamespaceSpec"),
        "status": O({"phase": S(go="v1.NamespacePhase"), "conditions": A(ANY)}, go="NamespaceStatus"),
    },
    go="Namespace",
)
EVENT_SCHEMA = top({}, go="Event", preserve=True)


# ---------------------------------------------------------------------------------------------
# The resources served


class Res:
    def __init__(self, group, version, plural, kind, schema, namespaced=True, crd=False, status=False,
                 short=(), singular=None, verbs=None):
        self.group = group
        self.version = version
        self.plural = plural
        self.kind = kind
        self.schema = schema
        self.namespaced = namespaced
        self.crd = crd
        self.status = status
        self.short = list(short)
        self.singular = singular or kind.lower()
        self.verbs = verbs or ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]

    @property
    def api_version(self):
        return "%s/%s" % (self.group, self.version) if self.group else self.version

    @property
    def qualified(self):
        return "%s.%s" % (self.plural, self.group) if self.group else self.plural

    @property
    def qkind(self):
        return "%s.%s" % (self.kind, self.group) if self.group else self.kind

    @property
    def list_kind(self):
        return self.kind + "List"

    def patch_types(self):
        t = ["application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"]
        if not self.crd:
            t.append("application/strategic-merge-patch+json")
        return t


RESOURCES = [
    Res("", "v1", "configmaps", "ConfigMap", CONFIGMAP_SCHEMA, short=["cm"]),
    Res("", "v1", "secrets", "Secret", SECRET_SCHEMA),
    Res("", "v1", "namespaces", "Namespace", NAMESPACE_SCHEMA, namespaced=False, status=True, short=["ns"],
        verbs=["create", "delete", "get", "list", "patch", "update", "watch"]),
    Res("", "v1", "events", "Event", EVENT_SCHEMA, short=["ev"]),
    Res("events.k8s.io", "v1", "events", "Event", EVENT_SCHEMA, short=["ev"]),
    Res("coordination.k8s.io", "v1", "leases", "Lease", LEASE_SCHEMA),
    Res("messaging.knative.dev", "v1", "inmemorychannels", "InMemoryChannel", IMC_SCHEMA, crd=True,
        status=True, short=["imc"]),
    Res("eventing.knative.dev", "v1beta3", "eventtypes", "EventType", OPEN_CR_SCHEMA, crd=True, status=True),
    Res("eventing.knative.dev", "v1alpha1", "eventpolicies", "EventPolicy", OPEN_CR_SCHEMA, crd=True,
        status=True),
]
BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}
GROUP_VERSIONS = {}
for _r in RESOURCES:
    GROUP_VERSIONS.setdefault(_r.group, [])
    if _r.version not in GROUP_VERSIONS[_r.group]:
        GROUP_VERSIONS[_r.group].append(_r.version)


def resource_for(group, plural):
    for r in RESOURCES:
        if r.group == group and r.plural == plural:
            return r
    return None


def resource_named(name):
    """`inmemorychannels`, `leases.coordination.k8s.io`, `events.events.k8s.io` (control port);
    a bare plural served by two groups is the core one."""
    matches = [r for r in RESOURCES if name in (r.qualified, r.plural)]
    exact = [r for r in matches if r.qualified == name]
    return (exact or matches or [None])[0]


# ---------------------------------------------------------------------------------------------
# Decoding: pruning, nulls, types


MICRO_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.(\d{6})(Z|[+-]\d{2}:\d{2})$")
MICRO_LAYOUT = "2006-01-02T15:04:05.000000Z07:00"


def parse_micro_time(v):
    """metav1.MicroTime's UnmarshalJSON: Go's time.Parse with RFC3339Micro, exactly six
    fractional digits. Returns the value as the server writes it back (UTC), or raises
    ValueError with Go's message."""
    m = MICRO_RE.match(v)
    if not m:
        # Go names the first layout element that failed; find it the same way.
        elems = [("2006", r"\d{4}"), ("-", "-"), ("01", r"\d{2}"), ("-", "-"), ("02", r"\d{2}"),
                 ("T", "T"), ("15", r"\d{2}"), (":", ":"), ("04", r"\d{2}"), (":", ":"),
                 ("05", r"\d{2}"), (".000000", r"\.\d{6}"), ("Z07:00", r"(Z|[+-]\d{2}:\d{2})$")]
        rest = v
        layout_rest = MICRO_LAYOUT
        for elem, pat in elems:
            mm = re.match(pat, rest)
            if not mm:
                raise ValueError('parsing time "%s" as "%s": cannot parse "%s" as "%s"'
                                 % (v, MICRO_LAYOUT, rest, layout_rest if len(elem) == 1 else elem))
            rest = rest[mm.end():]
            layout_rest = layout_rest[len(elem):]
        raise ValueError('parsing time "%s" as "%s": extra text: "%s"' % (v, MICRO_LAYOUT, rest))
    y, mo, d, h, mi, s, frac, zone = m.groups()
    for val, lo, hi, name in ((mo, 1, 12, "month"), (h, 0, 23, "hour"), (mi, 0, 59, "minute"),
                              (s, 0, 59, "second")):
        if not lo <= int(val) <= hi:
            raise ValueError('parsing time "%s": %s out of range' % (v, name))
    try:
        tz = datetime.timezone.utc
        if zone != "Z":
            sign = 1 if zone[0] == "+" else -1
            tz = datetime.timezone(sign * datetime.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
        t = datetime.datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), int(frac), tzinfo=tz)
    except ValueError:
        raise ValueError('parsing time "%s": day out of range' % v)
    return t.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Decoded:
    def __init__(self):
        self.pruned = []  # paths of unknown fields
        self.type_errors = []  # FieldErrors (CRD validation)
        self.decode_error = None  # first Go decode error text (built-in types)
        self.required = []


def decode(value, schema, path, out, parent_go=None):
    """Prunes unknown fields, drops nulls, normalises formats; records problems in `out`."""
    t = schema.get("type")
    if t is None:
        return value
    actual = json_type(value)
    if t == "object":
        if actual != "object":
            type_problem(out, path, value, "object", schema, parent_go)
            return value
        result = {}
        props = schema.get("properties")
        additional = schema.get("additional")
        for k, v in value.items():
            if v is None:
                continue  # null in a non-nullable field: dropped before validation
            if props and k in props:
                result[k] = decode(v, props[k], path.child(k), out, schema.get("go") or parent_go)
            elif additional is not None:
                result[k] = decode(v, additional, path.key(k), out, schema.get("go") or parent_go)
            elif schema.get("preserve"):
                result[k] = v
            else:
                out.pruned.append(str(path.child(k)))
        for r in schema.get("required", ()):
            if r not in result:
                out.required.append(FieldError("FieldValueRequired", path.child(r)))
        return result
    if t == "array":
        if actual != "array":
            type_problem(out, path, value, "array", schema, parent_go)
            return value
        return [decode(v, schema["items"], path.index(i), out, parent_go) for i, v in enumerate(value)]
    if t == "integer":
        if actual != "integer":
            type_problem(out, path, value, "integer", schema, parent_go)
            return value
        v = int(value)
        if schema.get("go") == "int32" and not -2**31 <= v < 2**31:
            record_decode(out, "json: cannot unmarshal number %s into Go struct field %s of type int32"
                          % (v, go_field(parent_go, path)))
        return v
    if t == "boolean":
        if actual != "boolean":
            type_problem(out, path, value, "boolean", schema, parent_go)
        return value
    if t == "string":
        if actual != "string":
            type_problem(out, path, value, "string", schema, parent_go)
            return value
        fmt = schema.get("format")
        if fmt == "micro-time":
            try:
                return parse_micro_time(value)
            except ValueError as e:
                record_decode(out, str(e))
        elif fmt == "byte":
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                pos = next((i for i, c in enumerate(value) if not re.match(r"[A-Za-z0-9+/=]", c)), len(value))
                record_decode(out, "illegal base64 data at input byte %d" % pos)
        return value
    return value


def go_field(parent_go, path):
    return "%s.%s" % (parent_go or "Object", str(path))


def record_decode(out, text):
    if out.decode_error is None:
        out.decode_error = text


def type_problem(out, path, value, expected, schema, parent_go):
    actual = json_type(value)
    out.type_errors.append(
        FieldError("FieldValueTypeInvalid", path, actual,
                   '%s in body must be of type %s: "%s"' % (str(path), expected, actual))
    )
    record_decode(out, "json: cannot unmarshal %s into Go struct field %s of type %s"
                  % (go_json_type(value), go_field(parent_go, path), schema.get("go") or expected))


# ---------------------------------------------------------------------------------------------
# Selectors

LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class LabelSelector:
    """labels.Parse: k=v, k==v, k!=v, k in (a,b), k notin (a,b), k, !k; comma is AND."""

    def __init__(self, text):
        self.reqs = []
        text = text or ""
        for part in split_selector(text):
            part = part.strip()
            if not part:
                continue
            m = re.match(r"^([^\s!=()]+)\s+(in|notin)\s+\((.*)\)$", part)
            if m:
                vals = [v.strip() for v in m.group(3).split(",") if v.strip()]
                self.reqs.append((m.group(1), m.group(2), vals))
                continue
            m = re.match(r"^([^\s!=]+)\s*(==|!=|=)\s*([^\s]*)$", part)
            if m:
                op = {"=": "=", "==": "=", "!=": "!="}[m.group(2)]
                if not LABEL_VALUE_RE.match(m.group(3)):
                    raise err_bad_request("unable to parse requirement: values[0][%s]: Invalid value: \"%s\""
                                          % (m.group(1), m.group(3)))
                self.reqs.append((m.group(1), op, [m.group(3)]))
                continue
            m = re.match(r"^(!?)([A-Za-z0-9][-A-Za-z0-9_./]*)$", part)
            if m:
                self.reqs.append((m.group(2), "!exists" if m.group(1) else "exists", []))
                continue
            raise err_bad_request("unable to parse requirement: found '%s', expected: identifier" % part)

    def empty(self):
        return not self.reqs

    def matches(self, labels):
        labels = labels or {}
        for key, op, vals in self.reqs:
            present = key in labels
            v = labels.get(key)
            if op == "=" and not (present and v == vals[0]):
                return False
            if op == "!=" and present and v == vals[0]:
                return False
            if op == "in" and not (present and v in vals):
                return False
            if op == "notin" and present and v in vals:
                return False
            if op == "exists" and not present:
                return False
            if op == "!exists" and present:
                return False
        return True


def split_selector(text):
    parts, depth, cur = [], 0, ""
    for c in text:
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        if c == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += c
    parts.append(cur)
    return parts


class FieldSelector:
    """metadata.name and metadata.namespace, with =, == and !=, comma is AND."""

    def __init__(self, text, res):
        self.reqs = []
        for part in (text or "").split(","):
            part = part.strip()
            if not part:
                continue
            m = re.match(r"^([^=!]+)(==|!=|=)(.*)$", part)
            if not m:
                raise err_bad_request("invalid selector: '%s'; can't understand '%s'" % (text, part))
            field, op, value = m.group(1).strip(), m.group(2), m.group(3).strip()
            if field not in ("metadata.name", "metadata.namespace"):
                raise err_bad_request('field label not supported: %s' % field)
            self.reqs.append((field, op != "!=", value))

    def empty(self):
        return not self.reqs

    def matches(self, obj):
        meta = obj.get("metadata", {})
        for field, eq, value in self.reqs:
            actual = meta.get(field.split(".")[1], "")
            if (actual == value) != eq:
                return False
        return True

    def single_name(self):
        for field, eq, value in self.reqs:
            if field == "metadata.name" and eq:
                return value
        return None


# ---------------------------------------------------------------------------------------------
# Patches


class PatchError(Exception):
    pass


def pointer(path):
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError('add operation does not apply: doc is missing path: "%s": missing value' % path)
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def find_parent(doc, parts):
    """(container, key) for the last part, or (None, None) when the parent does not exist."""
    cur = doc
    for p in parts[:-1]:
        if isinstance(cur, dict):
            if p not in cur:
                return None, None
            cur = cur[p]
        elif isinstance(cur, list):
            try:
                i = int(p)
            except ValueError:
                return None, None
            if not 0 <= i < len(cur):
                return None, None
            cur = cur[i]
        else:
            return None, None
    if not isinstance(cur, (dict, list)):
        return None, None
    return cur, parts[-1]


def list_index(container, key, for_add):
    if key == "-" and for_add:
        return len(container)
    try:
        i = int(key)
    except ValueError:
        raise PatchError("Unable to access invalid index: %s: invalid index referenced" % key)
    limit = len(container) if for_add else len(container) - 1
    if i < 0 or i > limit:
        raise PatchError("Unable to access invalid index: %d: invalid index referenced" % i)
    return i


def get_at(doc, parts):
    if not parts:
        return True, doc
    c, k = find_parent(doc, parts)
    if c is None:
        return False, None
    if isinstance(c, dict):
        return (k in c), c.get(k)
    try:
        i = int(k)
    except ValueError:
        return False, None
    if 0 <= i < len(c):
        return True, c[i]
    return False, None


def json_patch(doc, ops):
    """RFC 6902 with the error texts of gopkg.in/evanphx/json-patch.v4 (the apiserver's)."""
    if not isinstance(ops, list):
        raise err_bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict):
            raise err_bad_request("json: cannot unmarshal into Go value of type jsonpatch.Operation")
        kind = op.get("op")
        path = op.get("path")
        if kind not in ("add", "remove", "replace", "move", "copy", "test"):
            raise PatchError("Unexpected kind: %s" % kind)
        if not isinstance(path, str):
            raise PatchError("%s operation does not apply: doc is missing path: \"\": missing value" % kind)
        parts = pointer(path)
        if kind == "add":
            if "value" not in op:
                raise PatchError("add operation does not apply: doc is missing value: missing value")
            doc = do_add(doc, parts, path, copy.deepcopy(op["value"]), "add")
        elif kind == "remove":
            doc, _ = do_remove(doc, parts, path, "remove")
        elif kind == "replace":
            if not parts:
                doc = copy.deepcopy(op.get("value"))
                continue
            c, k = find_parent(doc, parts)
            if c is None:
                raise PatchError("replace operation does not apply: doc is missing path: %s: missing value" % path)
            if isinstance(c, dict):
                if k not in c:
                    raise PatchError("replace operation does not apply: doc is missing key: %s: missing value" % path)
                c[k] = copy.deepcopy(op.get("value"))
            else:
                try:
                    c[list_index(c, k, False)] = copy.deepcopy(op.get("value"))
                except PatchError as e:
                    raise PatchError("error in replace for path: '%s': %s" % (path, e))
        elif kind in ("move", "copy"):
            frm = op.get("from")
            if not isinstance(frm, str):
                raise PatchError("%s operation does not apply: doc is missing from path: : missing value" % kind)
            fparts = pointer(frm)
            ok, val = get_at(doc, fparts)
            if not ok:
                raise PatchError("%s operation does not apply: doc is missing from path: %s: missing value"
                                 % (kind, frm))
            if kind == "move":
                doc, val = do_remove(doc, fparts, frm, "move")
            doc = do_add(doc, parts, path, copy.deepcopy(val), kind)
        elif kind == "test":
            ok, val = get_at(doc, parts)
            c, _ = find_parent(doc, parts) if parts else (doc, None)
            if c is None:
                raise PatchError("test operation does not apply: is missing path: %s: missing value" % path)
            expected = op.get("value")
            if not ok:
                if expected is None:
                    continue
                raise PatchError("testing value %s failed: test failed" % path)
            if not json_equal(val, expected):
                raise PatchError("testing value %s failed: test failed" % path)
    return doc


def do_add(doc, parts, path, value, kind):
    if not parts:
        return value
    c, k = find_parent(doc, parts)
    if c is None:
        if kind == "add":
            raise PatchError('add operation does not apply: doc is missing path: "%s": missing value' % path)
        raise PatchError("%s operation does not apply: doc is missing destination path: %s: missing value"
                         % (kind, path))
    if isinstance(c, dict):
        c[k] = value
    else:
        try:
            c.insert(list_index(c, k, True), value)
        except PatchError as e:
            raise PatchError("error in %s for path: '%s': %s" % (kind, path, e))
    return doc


def do_remove(doc, parts, path, kind):
    if not parts:
        return None, doc
    c, k = find_parent(doc, parts)
    if c is None:
        raise PatchError('%s operation does not apply: doc is missing path: "%s": missing value' % (kind, path))
    if isinstance(c, dict):
        if k not in c:
            raise PatchError("error in %s for path: '%s': Unable to remove nonexistent key: %s: missing value"
                             % (kind, path, k))
        return doc, c.pop(k)
    try:
        i = list_index(c, k, False)
    except PatchError as e:
        raise PatchError("error in %s for path: '%s': %s" % (kind, path, e))
    return doc, c.pop(i)


def json_equal(a, b):
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def merge_patch(target, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


SMP_MERGE_KEYS = {("metadata", "ownerReferences"): "uid"}
SMP_SET_LISTS = {("metadata", "finalizers"), ("spec", "finalizers")}


def strategic_merge(target, patch, path=()):
    """Strategic merge patch for the built-in types served here (see the header comment)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        p = {k: v for k, v in patch.items() if k != "$patch"}
        return copy.deepcopy(p)
    if patch.get("$patch") == "delete":
        return None
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if k in ("$patch", "$retainKeys") or k.startswith("$setElementOrder/"):
            continue
        if k.startswith("$deleteFromPrimitiveList/"):
            name = k.split("/", 1)[1]
            if isinstance(out.get(name), list) and isinstance(v, list):
                out[name] = [x for x in out[name] if x not in v]
            continue
        sub = path + (k,)
        if v is None:
            out.pop(k, None)
        elif isinstance(v, list) and sub in SMP_MERGE_KEYS and isinstance(out.get(k), list):
            key = SMP_MERGE_KEYS[sub]
            merged = list(out[k])
            for item in v:
                if not isinstance(item, dict):
                    continue
                idx = next((i for i, e in enumerate(merged) if isinstance(e, dict) and e.get(key) == item.get(key)),
                           None)
                if item.get("$patch") == "delete":
                    if idx is not None:
                        merged.pop(idx)
                elif idx is None:
                    merged.append({a: b for a, b in item.items() if a != "$patch"})
                else:
                    merged[idx] = strategic_merge(merged[idx], item, sub)
            out[k] = merged
        elif isinstance(v, list) and sub in SMP_SET_LISTS and isinstance(out.get(k), list):
            merged = list(out[k])
            for item in v:
                if item not in merged:
                    merged.append(item)
            out[k] = merged
        elif isinstance(v, dict):
            r = strategic_merge(out.get(k), v, sub)
            if r is None:
                out.pop(k, None)
            else:
                out[k] = r
        else:
            out[k] = copy.deepcopy(v)
    return out


# ---------------------------------------------------------------------------------------------
# managedFields: field sets as sets of tuples of "f:name" (lists atomic), "." for owned maps

META_UNMANAGED = {"name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
                  "managedFields", "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds",
                  "generateName"}


def child_schema(schema, key):
    if schema is None or schema.get("type") is None:
        return None
    if schema.get("properties") and key in schema["properties"]:
        return schema["properties"][key]
    if schema.get("additional") is not None:
        return schema["additional"]
    return None


def leaves(obj, schema, crd, prefix=(), in_meta=False, out=None, dots=None):
    """Leaf paths -> values (lists are atomic leaves), and the maps whose existence the writer
    of a new one owns ("."): map-typed fields, and for custom resources every object outside
    metadata (their schemas are maps to the field manager, built-in structs are not)."""
    if out is None:
        out, dots = {}, set()
    dottable = False
    if isinstance(obj, dict) and prefix:
        untyped = schema is None or schema.get("type") is None or schema.get("preserve")
        is_map = schema is not None and schema.get("additional") is not None
        dottable = is_map or untyped or (crd and not in_meta)
    if isinstance(obj, dict) and (obj or dottable):
        if dottable:
            dots.add(prefix)
        for k, v in obj.items():
            leaves(v, child_schema(schema, k), crd, prefix + ("f:" + k,),
                   in_meta or (not prefix and k == "metadata"), out, dots)
    else:
        out[prefix] = obj
    return out, dots


def managed_view(obj, res, subresource):
    """The part of an object a manager can own through this endpoint (subresource "all": the
    whole object)."""
    view = {}
    for k, v in obj.items():
        if k in ("apiVersion", "kind"):
            continue
        if k == "metadata":
            m = {mk: mv for mk, mv in v.items() if mk not in META_UNMANAGED}
            if m:
                view["metadata"] = m
            continue
        view[k] = v
    if res.status and subresource != "all":
        if subresource == "status":
            view = {"status": view["status"]} if "status" in view else {}
        else:
            view.pop("status", None)
    return view


def fieldset_from_v1(fv1, prefix=()):
    out = set()
    for k, v in (fv1 or {}).items():
        if k == ".":
            out.add(prefix + (".",))
        elif isinstance(v, dict) and v:
            out |= fieldset_from_v1(v, prefix + (k,))
        else:
            out.add(prefix + (k,))
    return out


def fieldset_to_v1(fs):
    """A member with no children is written `{}`, one with children gets `".": {}` among them."""
    root = {}
    for path in sorted(fs):
        cur = root
        for p in path:
            cur = cur.setdefault(p, {})

    def fold(node):
        for k, v in node.items():
            node[k] = {} if list(v) == ["."] else fold(v)
        return node

    return fold(root)


def update_managed_fields(old, new, res, manager, subresource, now):
    """The managedFields of `new` after `manager` wrote it with an Update operation: the writer
    gains the fields it changed, other managers lose them, fields that are gone are owned by
    nobody, and a manager left with nothing is dropped."""
    entries = copy.deepcopy((old or {}).get("metadata", {}).get("managedFields") or [])
    old_view = managed_view(old, res, subresource) if old else {}
    new_view = managed_view(new, res, subresource)
    old_leaves, old_dots = leaves(old_view, res.schema, res.crd)
    new_leaves, new_dots = leaves(new_view, res.schema, res.crd)
    old_leaves.pop((), None)
    new_leaves.pop((), None)
    changed = {p for p, v in new_leaves.items() if p not in old_leaves or not json_equal(old_leaves[p], v)}
    changed |= {d + (".",) for d in new_dots - old_dots}
    whole_leaves, whole_dots = leaves(managed_view(new, res, "all"), res.schema, res.crd)
    was_dots = leaves(managed_view(old, res, "all"), res.schema, res.crd)[1] if old else set()

    def normalize(fs):
        # `f:x: {}` is a map member when x is (or was) a map
        return {p + (".",) if p in whole_dots or p in was_dots else p for p in fs}

    def exists(p):
        if p and p[-1] == ".":
            return p[:-1] in whole_dots
        return p in whole_leaves

    sub = "status" if subresource == "status" and res.status else None
    result, mine, my_index = [], None, None
    for e in entries:
        if e.get("manager", "") == manager and e.get("operation") == "Update" and e.get("subresource") == sub:
            mine, my_index = e, len(result)
            continue
        fs = normalize(fieldset_from_v1(e.get("fieldsV1")))
        kept = {p for p in fs if p not in changed and exists(p)}
        if kept != fs:
            e["fieldsV1"] = fieldset_to_v1(kept)
        if kept:
            result.append(e)
    my_fs = normalize(fieldset_from_v1(mine.get("fieldsV1"))) if mine else set()
    my_new = {p for p in my_fs if exists(p)} | changed
    if my_new:
        if mine is not None and my_new == my_fs and json_equal(old_view, new_view):
            entry = mine
        else:
            entry = {"manager": manager, "operation": "Update", "apiVersion": res.api_version, "time": now,
                     "fieldsType": "FieldsV1", "fieldsV1": fieldset_to_v1(my_new)}
            if not manager:
                del entry["manager"]  # omitempty: a client with neither fieldManager nor User-Agent
            if sub:
                entry["subresource"] = sub
        if my_index is None:
            result.append(entry)
        else:
            result.insert(my_index, entry)
    return result


# ---------------------------------------------------------------------------------------------
# The store: objects, one resourceVersion counter, bounded history


class Event:
    __slots__ = ("rv", "type", "res", "namespace", "name", "obj", "prev")

    def __init__(self, rv, type_, res, namespace, name, obj, prev):
        self.rv = rv
        self.type = type_
        self.res = res
        self.namespace = namespace
        self.name = name
        self.obj = obj
        self.prev = prev


class Store:
    def __init__(self, initial_rv, history):
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.rv = initial_rv
        self.compacted_rv = initial_rv
        self.history_limit = history
        self.events = []
        self.objects = {}  # (res, namespace, name) -> object

    def key(self, res, namespace, name):
        return (res.qualified, namespace or "", name)

    def get(self, res, namespace, name):
        return self.objects.get(self.key(res, namespace, name))

    def items(self, res, namespace=None):
        out = []
        for (q, ns, name), obj in self.objects.items():
            if q == res.qualified and (namespace is None or ns == namespace):
                out.append(((ns, name), obj))
        out.sort(key=lambda x: x[0])
        return out

    def commit(self, res, namespace, name, obj, prev, type_):
        """Stores obj (None: deletes) under a fresh resourceVersion and records the event."""
        with self.lock:
            self.rv += 1
            rv = self.rv
            k = self.key(res, namespace, name)
            if obj is None:
                event_obj = copy.deepcopy(prev)
                event_obj["metadata"]["resourceVersion"] = str(rv)
                self.objects.pop(k, None)
            else:
                obj["metadata"]["resourceVersion"] = str(rv)
                self.objects[k] = obj
                event_obj = obj
            self.events.append(Event(rv, type_, res, namespace or "", name, copy.deepcopy(event_obj),
                                     copy.deepcopy(prev) if prev is not None else None))
            if len(self.events) > self.history_limit:
                drop = len(self.events) - self.history_limit
                self.compacted_rv = self.events[drop - 1].rv
                del self.events[:drop]
            self.cond.notify_all()
            return event_obj

    def compact(self, upto=None):
        with self.lock:
            upto = self.rv if upto is None else min(int(upto), self.rv)
            self.events = [e for e in self.events if e.rv > upto]
            self.compacted_rv = max(self.compacted_rv, upto)
            self.cond.notify_all()
            return self.compacted_rv

    def events_after(self, rv):
        # events are in rv order; few enough to scan from the end
        out = []
        for e in reversed(self.events):
            if e.rv <= rv:
                break
            out.append(e)
        out.reverse()
        return out

    def state_at(self, res, rv):
        """{(ns, name): obj} of `res` as it was at resourceVersion rv (rv >= compacted_rv)."""
        state = {k: v for k, v in self.items(res)}
        for e in reversed(self.events):
            if e.rv <= rv:
                break
            if e.res is not res:
                continue
            k = (e.namespace, e.name)
            if e.prev is None:
                state.pop(k, None)
            else:
                state[k] = e.prev
        return state


# ---------------------------------------------------------------------------------------------
# Authorization

SUPERUSER = [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]


def dispatcher_rules(system_namespace):
    """Upstream's ClusterRole imc-dispatcher and the TLS Role (contract section 1.6)."""
    return [
        {"apiGroups": ["messaging.knative.dev"], "resources": ["inmemorychannels", "inmemorychannels/status"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["messaging.knative.dev"],
         "resources": ["inmemorychannels", "inmemorychannels/status", "inmemorychannels/finalizers"],
         "verbs": ["patch"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "verbs": ["get", "list", "watch", "create", "update", "patch"]},
        {"apiGroups": ["eventing.knative.dev"], "resources": ["eventtypes", "eventpolicies"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["eventing.knative.dev"], "resources": ["eventtypes"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"],
         "namespaces": [system_namespace]},
    ]


def rule_allows(rule, info):
    def has(lst, v):
        return "*" in lst or v in lst

    if not has(rule.get("verbs", []), info.verb):
        return False
    if not has(rule.get("apiGroups", []), info.group):
        return False
    res = info.resource + ("/" + info.subresource if info.subresource else "")
    if not has(rule.get("resources", []), res):
        return False
    names = rule.get("resourceNames")
    if names and (info.name or info.selector_name) not in names:
        return False
    namespaces = rule.get("namespaces")
    if namespaces is not None and info.namespace not in namespaces:
        return False
    return True


class User:
    def __init__(self, name, role, rules, groups):
        self.name = name
        self.role = role
        self.rules = rules
        self.groups = groups

    @property
    def superuser(self):
        return self.role == "admin"


def load_tokens(path, system_namespace):
    with open(path) as f:
        raw = json.load(f)
    tokens = {}
    for token, spec in raw.items():
        role = spec.get("role", "none")
        if isinstance(role, list):
            rules, role_name = role, "custom"
        elif role == "admin":
            rules, role_name = SUPERUSER, "admin"
        elif role == "imc-dispatcher":
            rules, role_name = dispatcher_rules(system_namespace), role
        elif role == "none":
            rules, role_name = [], role
        else:
            raise SystemExit("tokens file: unknown role %r for user %r" % (role, spec.get("user")))
        groups = spec.get("groups", []) + ["system:authenticated"]
        if role == "admin":
            groups.append("system:masters")
        tokens[token] = User(spec["user"], role_name, rules, groups)
    return tokens


def forbidden(info, user, suffix=""):
    res = info.resource + ("/" + info.subresource if info.subresource else "")
    if info.namespace:
        where = 'in the namespace "%s"' % info.namespace
    else:
        where = "at the cluster scope"
    reason = 'User "%s" cannot %s resource "%s" in API group "%s" %s' % (user, info.verb, res, info.group, where)
    qualified = info.resource + ("." + info.group if info.group else "")
    if info.name:
        msg = '%s "%s" is forbidden: %s%s' % (qualified, info.name, reason, suffix)
    else:
        msg = "%s is forbidden: %s%s" % (qualified, reason, suffix)
    d = {}
    if info.name:
        d["name"] = info.name
    if info.group:
        d["group"] = info.group
    d["kind"] = info.resource
    return ApiError(403, "Forbidden", msg, d)


# ---------------------------------------------------------------------------------------------
# Request info (the apiserver's RequestInfoFactory, for the paths served here)


class RequestInfo:
    def __init__(self):
        self.is_resource = False
        self.path = "/"
        self.verb = ""
        self.group = ""
        self.version = ""
        self.resource = ""
        self.subresource = ""
        self.namespace = ""
        self.name = ""
        self.selector_name = ""  # list/watch with fieldSelector=metadata.name=X: RBAC resourceNames
        self.prefix_parts = []

    def as_log(self):
        if not self.is_resource:
            return {"verb": self.verb}
        return {"verb": self.verb, "group": self.group, "version": self.version, "resource": self.resource,
                "subresource": self.subresource, "namespace": self.namespace, "name": self.name}


def request_info(method, path, query):
    info = RequestInfo()
    info.path = path
    parts = [p for p in path.strip("/").split("/") if p != ""]
    if parts and parts[0] == "api":
        rest = parts[1:]
        info.prefix_parts = ["api"]
    elif parts and parts[0] == "apis":
        if len(parts) < 3:
            info.verb = method.lower()
            return info
        info.group = parts[1]
        rest = parts[2:]
        info.prefix_parts = ["apis", parts[1]]
    else:
        info.verb = method.lower()
        return info
    if len(rest) < 2:
        info.verb = method.lower()
        if rest:
            info.version = rest[0]
        return info
    info.is_resource = True
    info.version = rest[0]
    cur = rest[1:]
    if cur[0] == "namespaces":
        if len(cur) > 1:
            info.namespace = cur[1]
            if len(cur) > 2 and cur[2] not in ("status", "finalize"):
                cur = cur[2:]
    info.resource = cur[0]
    if len(cur) >= 2:
        info.name = cur[1]
    if len(cur) >= 3:
        info.subresource = cur[2]
    if len(cur) > 3:
        info.subresource = "/".join(cur[2:])
    watch = first(query, "watch") in ("true", "1")
    verbs = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch",
             "DELETE": "delete"}
    info.verb = verbs.get(method, method.lower())
    if method in ("GET", "HEAD"):
        if watch:
            info.verb = "watch"
        elif not info.name:
            info.verb = "list"
    if method == "DELETE" and not info.name:
        info.verb = "deletecollection"
    if info.verb in ("list", "watch") and not info.name:
        # list/watch with metadata.name=X is authorized as that name (as RBAC resourceNames do)
        fs = first(query, "fieldSelector") or ""
        m = re.match(r"^metadata\.name==?([^,]+)$", fs)
        if m:
            info.selector_name = m.group(1)
    return info


def first(query, name, default=None):
    v = query.get(name)
    return v[0] if v else default


# ---------------------------------------------------------------------------------------------
# Writes: the one pipeline every create, update, patch and delete goes through


def validate_metadata(res, obj, creating):
    errs = []
    meta = obj.get("metadata", {})
    name = meta.get("name", "")
    if creating and not name and not meta.get("generateName"):
        errs.append(FieldError("FieldValueRequired", "metadata.name", detail="name or generateName is required"))
    elif name:
        if res.plural == "namespaces":
            if not DNS_LABEL_RE.match(name) or len(name) > 63:
                errs.append(FieldError(
                    "FieldValueInvalid", "metadata.name", name,
                    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
                    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
                    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"))
        elif not DNS_SUBDOMAIN_RE.match(name) or len(name) > 253:
            errs.append(FieldError(
                "FieldValueInvalid", "metadata.name", name,
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
                "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"))
    for k, v in (meta.get("labels") or {}).items():
        if not isinstance(v, str):
            continue
        if len(v) > 63 or not LABEL_VALUE_RE.match(v):
            errs.append(FieldError(
                "FieldValueInvalid", "metadata.labels", v,
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
                "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
                "'12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"))
    return errs


def validate_kind(res, obj, old):
    errs = []
    if res.plural == "leases":
        spec = obj.get("spec") or {}
        d = spec.get("leaseDurationSeconds")
        if isinstance(d, int) and not isinstance(d, bool) and d <= 0:
            errs.append(FieldError("FieldValueInvalid", "spec.leaseDurationSeconds", d, "must be greater than 0"))
        t = spec.get("leaseTransitions")
        if isinstance(t, int) and not isinstance(t, bool) and t < 0:
            errs.append(FieldError("FieldValueInvalid", "spec.leaseTransitions", t,
                                   "must be greater than or equal to 0"))
        if spec.get("preferredHolder") and not spec.get("strategy"):
            errs.append(FieldError("FieldValueForbidden", "spec.preferredHolder",
                                   detail="may only be specified if `strategy` is defined"))
    if res.plural in ("configmaps", "secrets") and old is not None and old.get("immutable"):
        for f in (("data", "binaryData") if res.plural == "configmaps" else ("data",)):
            if not json_equal(old.get(f), obj.get(f)):
                errs.append(FieldError("FieldValueForbidden", f,
                                       detail="field is immutable when `immutable` is set"))
        if obj.get("immutable") is not True:
            errs.append(FieldError("FieldValueForbidden", "immutable",
                                   detail="field is immutable when `immutable` is set"))
    if old is not None:
        new_f = (obj.get("metadata") or {}).get("finalizers") or []
        old_f = (old.get("metadata") or {}).get("finalizers") or []
        if old["metadata"].get("deletionTimestamp") and any(f not in old_f for f in new_f):
            errs.append(FieldError("FieldValueForbidden", "metadata.finalizers",
                                   detail="no new finalizers can be added if the object is being deleted"))
    return errs


def spec_part(obj):
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


class Writer:
    """The write pipeline, shared by the API port and the control port."""

    def __init__(self, store, server):
        self.store = store
        self.server = server

    def decode_body(self, res, body, directive, warnings, for_patch=False):
        """Prunes and type-checks a whole object; returns it, raising the API's errors."""
        out = Decoded()
        obj = decode(body, res.schema, Path(), out)
        if out.pruned:
            pruned = sorted(set(out.pruned))
            if directive == "Strict":
                msg = "strict decoding error: " + ", ".join('unknown field "%s"' % p for p in pruned)
                if for_patch:
                    raise err_bad_request(msg)
                raise err_bad_request('%s in version "%s" cannot be handled as a %s: %s'
                                      % (res.kind, res.version, res.kind, msg))
            if directive != "Ignore":
                warnings.extend('unknown field "%s"' % p for p in pruned)
        if not res.crd and out.decode_error:
            if for_patch:
                raise ApiError(
                    422, "Invalid", ' "" is invalid: patch: Invalid value: %s: %s'
                    % (json.dumps(dumps(body)), out.decode_error),
                    {"causes": [{"reason": "FieldValueInvalid",
                                 "message": "Invalid value: %s: %s" % (json.dumps(dumps(body)), out.decode_error),
                                 "field": "patch"}]})
            raise err_bad_request('%s in version "%s" cannot be handled as a %s: %s'
                                  % (res.kind, res.version, res.kind, out.decode_error))
        return obj, out

    def check_type_meta(self, res, body):
        if not isinstance(body, dict):
            raise err_bad_request("the object provided is unrecognized (must be of type %s): couldn't get "
                                  "version/kind; json parse error: json: cannot unmarshal %s into Go value of "
                                  "type struct { APIVersion string \"json:\\\"apiVersion,omitempty\\\"\"; Kind "
                                  "string \"json:\\\"kind,omitempty\\\"\" }" % (res.kind, go_json_type(body)))
        av, kind = body.get("apiVersion"), body.get("kind")
        if res.crd:
            if not kind:
                raise err_bad_request("Object 'Kind' is missing in '%s'" % dumps(body))
            if not av:
                raise err_bad_request("Object 'apiVersion' is missing in '%s'" % dumps(body))
        if av and av != res.api_version:
            raise err_bad_request("the API version in the data (%s) does not match the expected API version (%s)"
                                  % (av, res.api_version))
        if kind and kind != res.kind:
            raise err_bad_request("the kind in the data (%s) does not match the expected kind (%s)"
                                  % (kind, res.kind))

    def finish(self, res, namespace, name, candidate, old, out, subresource, manager, raw, dry_run,
               creating=False):
        """Strategy, validation, no-op detection, managedFields, commit. Returns (obj, changed)."""
        now = now_time()
        meta = candidate.setdefault("metadata", {})
        candidate["apiVersion"] = res.api_version
        candidate["kind"] = res.kind
        if creating:
            for f in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                      "generation", "managedFields", "selfLink"):
                meta.pop(f, None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now
            if res.namespaced:
                meta["namespace"] = namespace
            else:
                meta.pop("namespace", None)
            if res.crd:
                meta["generation"] = 1
            if res.status and not raw:
                candidate.pop("status", None)
            if res.plural == "namespaces":
                candidate.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
                candidate["status"] = {"phase": "Active"}
                meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
            if res.plural == "secrets":
                candidate.setdefault("type", "Opaque")
        else:
            if res.status and not raw:
                if subresource == "status":
                    status = candidate.get("status")
                    candidate = copy.deepcopy(old)
                    meta = candidate["metadata"]
                    if status is None:
                        candidate.pop("status", None)
                    else:
                        candidate["status"] = status
                else:
                    if "status" in old:
                        candidate["status"] = copy.deepcopy(old["status"])
                    else:
                        candidate.pop("status", None)
            for f in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                      "generation", "managedFields", "selfLink", "namespace", "name"):
                if f in old["metadata"]:
                    meta[f] = copy.deepcopy(old["metadata"][f])
                else:
                    meta.pop(f, None)
            meta["resourceVersion"] = old["metadata"]["resourceVersion"]
            if res.crd and not json_equal(spec_part(candidate), spec_part(old)):
                meta["generation"] = old["metadata"].get("generation", 1) + 1
        if res.plural == "secrets" and "stringData" in candidate:
            data = candidate.setdefault("data", {})
            for k, v in candidate.pop("stringData").items():
                data[k] = base64.b64encode(v.encode()).decode()
        if res.plural == "namespaces":
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
        # Validation after the strategy, as the registry does it.
        errs = []
        if res.crd and out is not None:
            recheck = Decoded()
            decode(candidate, res.schema, Path(), recheck)
            errs.extend(recheck.type_errors)
            errs.extend(recheck.required)
        if not raw:
            errs.extend(validate_metadata(res, candidate, creating))
            errs.extend(validate_kind(res, candidate, old))
        if errs:
            raise err_invalid(res, meta.get("name") or name, errs)
        if old is not None:
            cmp_new = copy.deepcopy(candidate)
            cmp_new["metadata"].pop("managedFields", None)
            cmp_old = copy.deepcopy(old)
            cmp_old["metadata"].pop("managedFields", None)
            if json_equal(cmp_new, cmp_old):
                return old, False
        mf = update_managed_fields(old, candidate, res, manager, subresource, now)
        if mf:
            meta["managedFields"] = mf
        else:
            meta.pop("managedFields", None)
        if dry_run:
            return candidate, False
        with self.store.lock:
            if (old is not None and meta.get("deletionTimestamp")
                    and not meta.get("finalizers")):
                return self.store.commit(res, namespace, meta["name"], None, old, "DELETED"), True
            return self.store.commit(res, namespace, meta["name"], candidate, old,
                                     "ADDED" if old is None else "MODIFIED"), True

    def create(self, res, namespace, body, manager, directive, warnings, raw=False, dry_run=False):
        self.check_type_meta(res, body)
        obj, out = self.decode_body(res, body, directive, warnings) if not raw else (copy.deepcopy(body), None)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise err_bad_request("metadata must be an object")
        if res.namespaced:
            ns = meta.get("namespace")
            if ns and ns != namespace:
                raise err_bad_request("the namespace of the provided object does not match the namespace sent "
                                      "on the request")
        if meta.get("resourceVersion") and not raw:
            raise err_internal("resourceVersion should not be set on objects to be created")
        meta.pop("resourceVersion", None)
        with self.store.lock:
            if res.namespaced and not self.namespace_exists(namespace):
                if raw:
                    self.ensure_namespace(namespace)
                else:
                    ns_res = resource_for("", "namespaces")
                    raise err_not_found(ns_res, namespace)
            if not meta.get("name") and meta.get("generateName"):
                for _ in range(8):
                    name = meta["generateName"] + "".join(random.choice("bcdfghjklmnpqrstvwxz2456789")
                                                          for _ in range(5))
                    if self.store.get(res, namespace, name) is None:
                        meta["name"] = name
                        break
            name = meta.get("name", "")
            if name and self.store.get(res, namespace, name) is not None:
                if raw:
                    old = self.store.get(res, namespace, name)
                    return self.finish(res, namespace, name, obj, old, out, None, manager, raw, dry_run)[0]
                if not validate_metadata(res, obj, True):
                    raise err_already_exists(res, name)
            return self.finish(res, namespace, name, obj, None, out, None, manager, raw, dry_run, creating=True)[0]

    def namespace_exists(self, namespace):
        return self.store.get(resource_for("", "namespaces"), "", namespace) is not None

    def ensure_namespace(self, namespace):
        ns_res = resource_for("", "namespaces")
        if not namespace or self.namespace_exists(namespace):
            return
        self.finish(ns_res, "", namespace, {"metadata": {"name": namespace}}, None, None, None,
                    "apiserver-fixture", False, False, creating=True)

    def update(self, res, namespace, name, subresource, body, manager, directive, warnings, raw=False,
               dry_run=False):
        self.check_type_meta(res, body)
        obj, out = self.decode_body(res, body, directive, warnings) if not raw else (copy.deepcopy(body), None)
        meta = obj.setdefault("metadata", {})
        if meta.get("name", "") != name:
            raise err_bad_request("the name of the object (%s) does not match the name on the URL (%s)"
                                  % (meta.get("name", ""), name))
        if res.namespaced and meta.get("namespace") and meta.get("namespace") != namespace:
            raise err_bad_request("the namespace of the provided object does not match the namespace sent on "
                                  "the request")
        with self.store.lock:
            old = self.store.get(res, namespace, name)
            if old is None:
                if raw:
                    return self.create(res, namespace, body, manager, directive, warnings, raw=True)
                raise err_not_found(res, name)
            rv = meta.get("resourceVersion")
            if not raw:
                if rv and rv != old["metadata"]["resourceVersion"]:
                    raise err_conflict(res, name)
                if not rv and res.crd:
                    raise err_invalid(res, name, [FieldError("FieldValueInvalid", "metadata.resourceVersion",
                                                             Raw("0x0"), "must be specified for an update")])
            return self.finish(res, namespace, name, obj, old, out, subresource, manager, raw, dry_run)[0]

    def patch(self, res, namespace, name, subresource, content_type, patch, manager, directive, warnings,
              raw=False, dry_run=False):
        with self.store.lock:
            old = self.store.get(res, namespace, name)
            if old is None:
                raise err_not_found(res, name)
            try:
                if content_type == "application/json-patch+json":
                    patched = json_patch(old, patch)
                elif content_type == "application/merge-patch+json":
                    if not isinstance(patch, dict):
                        raise err_bad_request("Invalid JSON Patch")
                    patched = merge_patch(old, patch)
                else:
                    if not isinstance(patch, dict):
                        raise err_bad_request("Invalid JSON Patch")
                    patched = strategic_merge(old, patch)
            except PatchError as e:
                raise err_patch_invalid(str(e))
            if not isinstance(patched, dict):
                raise err_bad_request("the object provided is unrecognized")
            self.check_type_meta(res, patched)
            if raw:
                obj, out = copy.deepcopy(patched), None
            else:
                obj, out = self.decode_body(res, patched, directive, warnings, for_patch=True)
            meta = obj.setdefault("metadata", {})
            if meta.get("name") != name:
                raise err_bad_request("the name of the object (%s) does not match the name on the URL (%s)"
                                      % (meta.get("name", ""), name))
            rv = meta.get("resourceVersion")
            if not raw and rv and rv != old["metadata"]["resourceVersion"]:
                raise err_conflict(res, name)
            return self.finish(res, namespace, name, obj, old, out, subresource, manager, raw, dry_run)[0]

    def delete(self, res, namespace, name, options, manager, dry_run=False):
        with self.store.lock:
            old = self.store.get(res, namespace, name)
            if old is None:
                raise err_not_found(res, name)
            pre = (options or {}).get("preconditions") or {}
            if pre.get("uid") and pre["uid"] != old["metadata"].get("uid"):
                raise err_conflict(res, name, "Precondition failed: UID in precondition: %s, UID in object meta: %s"
                                   % (pre["uid"], old["metadata"].get("uid")))
            if pre.get("resourceVersion") and pre["resourceVersion"] != old["metadata"]["resourceVersion"]:
                raise err_conflict(res, name, "Precondition failed: ResourceVersion in precondition: %s, "
                                   "ResourceVersion in object meta: %s"
                                   % (pre["resourceVersion"], old["metadata"]["resourceVersion"]))
            if old["metadata"].get("finalizers"):
                if old["metadata"].get("deletionTimestamp"):
                    return old, False
                obj = copy.deepcopy(old)
                obj["metadata"]["deletionTimestamp"] = now_time()
                obj["metadata"]["deletionGracePeriodSeconds"] = 0
                if obj["metadata"].get("generation"):
                    obj["metadata"]["generation"] += 1
                if dry_run:
                    return obj, False
                return self.store.commit(res, namespace, name, obj, old, "MODIFIED"), False
            if dry_run:
                return old, True
            return self.store.commit(res, namespace, name, None, old, "DELETED"), True


# ---------------------------------------------------------------------------------------------
# Serving state: phases (restart), faults, the request log, watches


class Fault:
    def __init__(self, spec, fid):
        self.id = fid
        self.spec = spec
        self.remaining = int(spec.get("count", 1))
        self.path_re = re.compile(spec["path_regex"]) if spec.get("path_regex") else None

    def matches(self, method, path, info):
        s = self.spec
        if self.remaining <= 0:
            return False
        if s.get("method") and s["method"].upper() != method:
            return False
        if s.get("path") and s["path"] != path:
            return False
        if s.get("path_prefix") and not path.startswith(s["path_prefix"]):
            return False
        if self.path_re and not self.path_re.search(path):
            return False
        for field in ("verb", "resource", "subresource", "namespace", "name", "group"):
            if field in s and s[field] != getattr(info, field):
                return False
        return True

    def as_json(self):
        d = dict(self.spec)
        d["id"] = self.id
        d["remaining"] = self.remaining
        return d


class WatchHandle:
    def __init__(self, wid, sock, path, query, user, start_rv):
        self.id = wid
        self.sock = sock
        self.path = path
        self.query = query
        self.user = user
        self.start_rv = start_rv
        self.last_rv = start_rv
        self.started = time.time()
        self.dropped = False
        self.entry = None  # its request-log entry: "ended" is written before the stream ends

    def as_json(self):
        return {"id": self.id, "path": self.path, "query": self.query, "user": self.user,
                "start_rv": str(self.start_rv), "last_rv": str(self.last_rv), "started": self.started}


class Server:
    def __init__(self, args):
        self.args = args
        self.store = Store(args.initial_rv, args.history)
        self.writer = Writer(self.store, self)
        self.tokens = load_tokens(args.tokens, args.system_namespace) if args.tokens else {}
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self.ctx.load_cert_chain(args.cert, args.key)
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.lock = threading.Lock()
        self.conns = set()
        self.epoch = 0
        self.graceful_epoch = set()
        self.listener = None
        self.port = args.port
        self.bind = args.bind
        self.phases = []  # [(until, phase, options)]
        self.faults = []
        self.next_fault = 1
        self.log = []
        self.log_seq = 0
        self.log_limit = 20000
        self.watches = {}
        self.next_watch = 1
        self.bookmark_interval = args.bookmark_interval
        self.started = time.time()

    # -- listening

    def listen(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.bind, self.port))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        with self.lock:
            self.listener = sock
            epoch = self.epoch
        threading.Thread(target=self.accept_loop, args=(sock, epoch), daemon=True).start()

    def accept_loop(self, sock, epoch):
        while True:
            with self.lock:
                if self.listener is not sock:
                    break
            try:
                r, _, _ = select.select([sock], [], [], 0.1)
            except (OSError, ValueError):
                break
            if not r:
                continue
            try:
                raw, addr = sock.accept()
            except OSError:
                continue
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self.serve_conn, args=(raw, addr), daemon=True).start()

    def stop_listening(self):
        with self.lock:
            sock, self.listener = self.listener, None
        if sock is not None:
            # shutdown first: the accept thread's select() keeps a closed socket listening until
            # it returns, shutdown stops the listening at once.
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def serve_conn(self, raw, addr):
        with self.lock:
            self.conns.add(raw)
            epoch = self.epoch
        sock = raw
        try:
            raw.settimeout(10)
            # wrap_socket takes the file descriptor over: from here on only `tls` owns it.
            tls = self.ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            with self.lock:
                self.conns.discard(raw)
                self.conns.add(tls)
            sock = tls
            if epoch != self.epoch:
                return
            tls.do_handshake()
            tls.settimeout(None)
            ApiHandler(tls, addr, self, epoch)
        except Exception:
            pass
        finally:
            with self.lock:
                self.conns.discard(sock)
            try:
                sock.close()
            except OSError:
                pass

    # -- phases

    def phase(self):
        now = time.time()
        with self.lock:
            for until, name, opts in self.phases:
                if now < until:
                    return name, opts
        return "up", {}

    def restart(self, plan):
        down = float(plan.get("down_seconds", 1))
        forbidden_s = float(plan.get("forbidden_seconds", 0))
        unavailable = float(plan.get("unavailable_seconds", 1))
        initializing = float(plan.get("initializing_seconds", 1))
        graceful = bool(plan.get("graceful", False))
        opts = {"unavailable_scope": plan.get("unavailable_scope", "all"),
                "initializing_scope": plan.get("initializing_scope", "all")}
        self.stop_listening()
        with self.lock:
            self.epoch += 1
            if graceful:
                self.graceful_epoch.add(self.epoch - 1)  # the epoch being ended
            conns = list(self.conns)
            for h in self.watches.values():
                if h.entry is not None:
                    h.entry["ended"] = "restart (graceful)" if graceful else "restart"
            if not graceful:
                self.watches.clear()
            t = time.time() + down
            self.phases = [(t, "down", opts)]
            for dur, name in ((forbidden_s, "forbidden"), (unavailable, "unavailable"),
                              (initializing, "initializing")):
                if dur > 0:
                    t += dur
                    self.phases.append((t, name, opts))
            timeline = [{"phase": n, "until": u} for u, n, _ in self.phases]
        with self.store.cond:
            self.store.cond.notify_all()
        def close_all():
            if graceful:
                time.sleep(0.3)  # watches first write their terminator
            for c in conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        threading.Thread(target=close_all, daemon=True).start()
        # A starting kube-apiserver renews its identity Lease (and reconciles the kubernetes
        # Endpoints) before it serves: the resourceVersion always moves on a restart, so a
        # client's last resourceVersion is older than the new watch cache.
        micro = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        identity = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": "apiserver-fixture", "namespace": "kube-system",
                                 "labels": {"apiserver.kubernetes.io/identity": "kube-apiserver"}},
                    "spec": {"holderIdentity": "apiserver-fixture_%d" % self.epoch,
                             "leaseDurationSeconds": 3600, "renewTime": micro}}
        self.writer.create(resource_for("coordination.k8s.io", "leases"), "kube-system", identity,
                           "kube-apiserver", "Ignore", [], raw=True)
        self.store.compact()
        log("restart: down %.1fs, forbidden %.1fs, 503 %.1fs, 429 %.1fs, graceful=%s"
            % (down, forbidden_s, unavailable, initializing, graceful))

        def relisten():
            time.sleep(down)
            for _ in range(50):
                try:
                    self.listen()
                    log("restart: listening again on %s:%d" % (self.bind, self.port))
                    return
                except OSError as e:
                    log("restart: bind failed (%s), retrying" % e)
                    time.sleep(0.1)

        threading.Thread(target=relisten, daemon=True).start()
        return {"timeline": timeline, "compacted_rv": str(self.store.compacted_rv)}

    def drop_watches(self):
        with self.lock:
            handles = list(self.watches.values())
            self.watches.clear()  # gone now, whenever their threads notice
        for h in handles:
            h.dropped = True
            if h.entry is not None:
                h.entry["ended"] = "dropped"
            try:
                h.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self.store.cond:
            self.store.cond.notify_all()
        return len(handles)

    # -- faults

    def add_fault(self, spec):
        with self.lock:
            f = Fault(spec, self.next_fault)
            self.next_fault += 1
            self.faults.append(f)
            return f.as_json()

    def take_fault(self, method, path, info):
        with self.lock:
            for f in self.faults:
                if f.matches(method, path, info):
                    f.remaining -= 1
                    return f
        return None

    # -- request log

    def record(self, entry):
        with self.lock:
            self.log_seq += 1
            entry["seq"] = self.log_seq
            self.log.append(entry)
            if len(self.log) > self.log_limit:
                del self.log[: len(self.log) - self.log_limit]
        return entry


def log(msg):
    sys.stderr.write("%s %s\n" % (datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3], msg))
    sys.stderr.flush()


# ---------------------------------------------------------------------------------------------
# The API port


NON_RESOURCE_PUBLIC = ("/version", "/healthz", "/livez", "/readyz")
MAX_BODY = 3 * 1024 * 1024  # the apiserver's MaxRequestBodyBytes


class ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 90  # idle keep-alive connections are closed after this

    def __init__(self, sock, addr, server_state, epoch):
        self.state = server_state
        self.epoch = epoch
        super().__init__(sock, addr, None)

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        self.serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    # -- reading and writing

    def read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            data = b""
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline(65537)
                if len(data) > MAX_BODY:
                    self.close_connection = True
                    raise ApiError(413, "RequestEntityTooLarge", "Request entity too large: limit is %d"
                                   % MAX_BODY, {})
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            self.close_connection = True
            raise ApiError(413, "RequestEntityTooLarge", "Request entity too large: limit is %d" % MAX_BODY, {})
        return self.rfile.read(n) if n else b""

    def common_headers(self, authenticated):
        h = [("Audit-Id", str(uuid.uuid4())), ("Cache-Control", "no-cache, private")]
        if authenticated:
            h.append(("X-Kubernetes-Pf-Flowschema-Uid", "7f2b1c66-6a8d-4f5e-9a1e-0c1d2e3f4a5b"))
            h.append(("X-Kubernetes-Pf-Prioritylevel-Uid", "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f"))
        return h

    def send(self, code, body, content_type="application/json", headers=()):
        data = body if isinstance(body, bytes) else body.encode()
        reason = self.responses.get(code, ("",))[0]
        out = ["HTTP/1.1 %d %s" % (code, reason)]
        for k, v in list(headers) + [("Content-Type", content_type),
                                     ("Date", self.date_time_string()),
                                     ("Content-Length", str(len(data)))]:
            out.append("%s: %s" % (k, v))
        if self.close_connection:
            out.append("Connection: close")
        payload = ("\r\n".join(out) + "\r\n\r\n").encode() + (data if self.command != "HEAD" else b"")
        self.wfile.write(payload)

    # -- the pipeline

    def serve(self):
        if self.epoch != self.state.epoch:
            self.close_connection = True
            return
        started = time.time()
        split = urlsplit(self.path)
        path = unquote(split.path)
        query = parse_qs(split.query, keep_blank_values=True)
        body = b""
        entry = {
            "time": started, "method": self.command, "path": path, "query": split.query,
            "params": {k: v[0] for k, v in query.items()},
            "content_type": self.headers.get("Content-Type"), "user_agent": self.headers.get("User-Agent"),
            "user": None, "body": None, "status": None, "reason": None, "warnings": [], "watch": False,
        }
        info = request_info(self.command, path, query)
        entry.update(info.as_log())
        warnings = []
        user = None
        resp_headers = []
        try:
            body = self.read_body()
            if body:
                entry["body"] = body.decode("utf-8", "replace")
            user = self.authenticate()
            entry["user"] = user.name
            resp_headers = self.common_headers(True)
            self.check_phase(info, user)
            if info.is_resource or path not in NON_RESOURCE_PUBLIC:
                self.authorize(info, user)
            self.check_phase_after_authz(info)
            fault = self.state.take_fault(self.command, path, info)
            if fault is not None:
                entry["fault"] = fault.id
                if self.apply_fault(fault, info, entry, resp_headers):
                    return
            code, obj = self.route(info, path, query, body, user, warnings, entry, resp_headers)
            if code is None:  # a watch: already answered and logged
                return
            for w in warnings:
                resp_headers.append(("Warning", '299 - %s' % json.dumps(w)))
            entry["warnings"] = warnings
            if isinstance(obj, tuple):  # (content_type, text)
                self.send(code, obj[1], obj[0], resp_headers)
            else:
                self.send(code, dumps(obj), headers=resp_headers)
            entry["status"] = code
        except ApiError as e:
            if not resp_headers:
                resp_headers = self.common_headers(user is not None)
            self.send(e.code, dumps(e.status()), headers=resp_headers + e.headers)
            entry["status"] = e.code
            entry["reason"] = e.reason
            entry["message"] = e.message
            if e.log:
                entry["detail"] = e.log
        except (BrokenPipeError, ConnectionError, ssl.SSLError, socket.timeout):
            self.close_connection = True
            entry["status"] = entry["status"] or 0
        except Exception as e:  # a fixture bug: answer 500 and say so in the log
            log("fixture error: %s\n%s" % (e, traceback.format_exc()))
            err = err_internal("fixture error: %s" % e)
            try:
                self.send(500, dumps(err.status()), headers=self.common_headers(True))
            except OSError:
                pass
            entry["status"] = 500
        finally:
            if not entry.get("watch"):
                entry["duration"] = time.time() - started
                self.state.record(entry)
                log("%s %s%s -> %s (%s)" % (self.command, path, "?" + split.query if split.query else "",
                                            entry["status"], entry["user"]))

    def authenticate(self):
        auth = self.headers.get("Authorization") or ""
        if auth.startswith("Bearer "):
            user = self.state.tokens.get(auth[len("Bearer "):].strip())
            if user is not None:
                return user
            raise ApiError(401, "Unauthorized", "Unauthorized")
        if auth == "" and self.state.args.anonymous_auth:
            return User("system:anonymous", "none", [], ["system:unauthenticated"])
        raise ApiError(401, "Unauthorized", "Unauthorized")

    def authorize(self, info, user):
        if user.superuser:
            return
        if not info.is_resource:
            if user.name != "system:anonymous" and (info.path in ("/api", "/apis", "/version") or
                                                   info.path.startswith(("/api/", "/apis/", "/healthz",
                                                                         "/livez", "/readyz"))):
                return
            raise ApiError(403, "Forbidden", 'forbidden: User "%s" cannot %s path "%s"'
                           % (user.name, info.verb, info.path), {})
        if any(rule_allows(r, info) for r in user.rules):
            return
        raise forbidden(info, user.name)

    def check_phase(self, info, user):
        phase, _ = self.state.phase()
        if phase == "forbidden" and info.is_resource and not user.superuser:
            raise forbidden(info, user.name, ': RBAC: clusterrole.rbac.authorization.k8s.io "%s" not found'
                            % (user.role if user.role != "custom" else "custom"))

    def check_phase_after_authz(self, info):
        phase, opts = self.state.phase()
        if not info.is_resource:
            return
        if phase == "unavailable":
            res = BY_PATH.get((info.group, info.version, info.resource))
            if opts.get("unavailable_scope") == "all" or (res is not None and res.crd):
                raise err_unavailable("the request has been made before all known HTTP paths have been "
                                      "installed, please try again", 5)
        if phase == "initializing":
            if opts.get("initializing_scope") == "all" or info.verb == "watch":
                raise err_too_many("storage is (re)initializing", 1)

    def apply_fault(self, fault, info, entry, resp_headers):
        s = fault.spec
        if s.get("delay_seconds"):
            time.sleep(float(s["delay_seconds"]))
        if s.get("close"):
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            entry["status"] = 0
            entry["reason"] = "closed by fault"
            return True
        code = s.get("status")
        if not code:
            return False
        res = BY_PATH.get((info.group, info.version, info.resource))
        err = fault_error(int(code), s, res, info)
        if s.get("as_watch_event") and info.verb == "watch":
            self.start_stream(resp_headers)
            self.write_event({"type": "ERROR", "object": err.status()})
            self.end_stream()
            entry["status"] = 200
            entry["reason"] = err.reason
            return True
        raise err

    # -- routing

    def route(self, info, path, query, body, user, warnings, entry, resp_headers):
        st = self.state
        if not info.is_resource:
            return self.non_resource(path)
        res = BY_PATH.get((info.group, info.version, info.resource))
        if res is None:
            if (info.group in GROUP_VERSIONS and info.version in GROUP_VERSIONS[info.group]):
                raise ApiError(404, "NotFound", "the server could not find the requested resource", {})
            return 404, ("text/plain; charset=utf-8", "404 page not found\n")
        if info.subresource and not (info.subresource == "status" and res.status):
            raise ApiError(404, "NotFound", "the server could not find the requested resource", {})
        if res.namespaced and not info.namespace and info.name:
            return 404, ("text/plain; charset=utf-8", "404 page not found\n")
        if not res.namespaced and info.namespace and res.plural != "namespaces":
            return 404, ("text/plain; charset=utf-8", "404 page not found\n")
        ns = info.namespace if res.namespaced else ""
        if res.plural == "namespaces":
            ns = ""
        manager = first(query, "fieldManager") or prefix_from_user_agent(self.headers.get("User-Agent") or "")
        directive = first(query, "fieldValidation") or "Warn"
        if directive not in ("Ignore", "Warn", "Strict"):
            raise err_bad_request('fieldValidation must be one of "Ignore", "Warn", or "Strict"')
        dry_run = "All" in query.get("dryRun", [])
        verb = info.verb
        if verb == "watch":
            self.serve_watch(res, ns, info, query, user, entry, resp_headers)
            return None, None
        if verb == "get":
            with st.store.lock:
                obj = st.store.get(res, ns, info.name)
                if obj is None:
                    raise err_not_found(res, info.name)
                return 200, copy.deepcopy(obj)
        if verb == "list":
            return 200, self.list(res, ns if res.namespaced and info.namespace else None, query)
        if verb in ("create", "update", "patch"):
            parsed = self.parse_body(body, res, verb)
        if verb == "create":
            if info.name or info.subresource:
                raise err_method_not_allowed()
            if res.namespaced and not info.namespace:
                raise err_method_not_allowed()
            obj = st.writer.create(res, ns, parsed, manager, directive, warnings, dry_run=dry_run)
            return 201, obj
        if verb == "update":
            obj = st.writer.update(res, ns, info.name, info.subresource, parsed, manager, directive, warnings,
                                   dry_run=dry_run)
            return 200, obj
        if verb == "patch":
            ct = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            if ct not in ("application/json-patch+json", "application/merge-patch+json",
                          "application/strategic-merge-patch+json") or \
                    (ct == "application/strategic-merge-patch+json" and res.crd):
                raise err_unsupported_media(res.patch_types())
            obj = st.writer.patch(res, ns, info.name, info.subresource, ct, parsed, manager, directive,
                                  warnings, dry_run=dry_run)
            return 200, obj
        if verb == "delete":
            if info.subresource:
                raise err_method_not_allowed()
            options = json.loads(body) if body.strip() else {}
            obj, deleted = st.writer.delete(res, ns, info.name, options, manager, dry_run=dry_run)
            if res.crd or not deleted:
                return 200, obj
            d = {"name": info.name}
            if res.group:
                d["group"] = res.group
            d["kind"] = res.plural
            d["uid"] = obj["metadata"].get("uid")
            return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d}
        if verb == "deletecollection":
            if res.namespaced and not info.namespace:
                raise err_method_not_allowed()
            sel = LabelSelector(first(query, "labelSelector"))
            fsel = FieldSelector(first(query, "fieldSelector"), res)
            with st.store.lock:
                victims = [(k, o) for k, o in st.store.items(res, ns if res.namespaced else None)
                           if sel.matches(o["metadata"].get("labels")) and fsel.matches(o)]
                gone = []
                for (vns, vname), _ in victims:
                    o, _ = st.writer.delete(res, vns, vname, {}, manager, dry_run=dry_run)
                    gone.append(o)
            return 200, self.list_document(res, gone, str(st.store.rv), None, None)
        raise err_method_not_allowed()

    def parse_body(self, body, res, verb):
        ct = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip()
        if verb != "patch" and ct not in ("application/json", "*/*", ""):
            raise err_unsupported_media(["application/json", "application/yaml",
                                         "application/vnd.kubernetes.protobuf"])
        if verb == "patch" and ct == "application/apply-patch+yaml":
            # Not implemented (see the header comment): a real server would apply it.
            raise ApiError(415, "UnsupportedMediaType", "the apiserver test fixture does not implement "
                           "server-side apply (application/apply-patch+yaml)")
        try:
            return json.loads(body.decode("utf-8")) if body else None
        except (ValueError, UnicodeDecodeError) as e:
            if verb == "patch":
                raise err_bad_request("error decoding patch: %s" % e)
            raise err_bad_request("the object provided is unrecognized (must be of type %s): couldn't get "
                                  "version/kind; json parse error: %s" % (res.kind, e))

    def non_resource(self, path):
        p = path.rstrip("/") or "/"
        if p in ("/healthz", "/livez", "/readyz"):
            return 200, ("text/plain; charset=utf-8", "ok")
        if p == "/version":
            return 200, KUBE_VERSION
        if p == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:%d" % self.state.port}]}
        if p == "/apis":
            return 200, {"kind": "APIGroupList", "apiVersion": "v1",
                         "groups": [group_doc(g) for g in GROUP_VERSIONS if g]}
        parts = p.strip("/").split("/")
        if parts == ["api", "v1"]:
            return 200, resource_list("", "v1")
        if len(parts) == 2 and parts[0] == "apis" and parts[1] in GROUP_VERSIONS:
            return 200, dict(group_doc(parts[1]), kind="APIGroup", apiVersion="v1")
        if len(parts) == 3 and parts[0] == "apis" and parts[2] in GROUP_VERSIONS.get(parts[1], []):
            return 200, resource_list(parts[1], parts[2])
        return 404, ("text/plain; charset=utf-8", "404 page not found\n")

    # -- list

    def list(self, res, namespace, query):
        st = self.state.store
        sel = LabelSelector(first(query, "labelSelector"))
        fsel = FieldSelector(first(query, "fieldSelector"), res)
        limit = int(first(query, "limit") or 0)
        cont = first(query, "continue")
        rv_param = first(query, "resourceVersion")
        match = first(query, "resourceVersionMatch")
        if match and match not in ("Exact", "NotOlderThan"):
            raise err_invalid(None, "", [FieldError("FieldValueNotSupported", "resourceVersionMatch", match,
                                                    'supported values: "Exact", "NotOlderThan"')],
                              qkind="ListOptions.meta.k8s.io")
        if match and not rv_param:
            raise err_invalid(None, "", [FieldError("FieldValueForbidden", "resourceVersionMatch",
                                                    detail="resourceVersionMatch is forbidden unless "
                                                    "resourceVersion is provided")],
                              qkind="ListOptions.meta.k8s.io")
        if cont and rv_param not in (None, ""):
            raise err_bad_request("specifying resource version is not allowed when using continue")
        start_key = None
        self.wait_for_rv(rv_param if not cont else None)
        with st.lock:
            if cont:
                try:
                    tok = json.loads(base64.b64decode(cont + "=" * (-len(cont) % 4), altchars=b"-_"))
                    at = int(tok["rv"])
                    start_key = tok["start"]
                except Exception:
                    raise err_bad_request("continue key is not valid: incorrect encoded start resourceVersion "
                                          "(version meta.k8s.io/v1)")
                if at < st.compacted_rv:
                    fresh = self.continue_token(st.rv, start_key.rstrip("\x00"))
                    raise err_expired(
                        "The provided continue parameter is too old to display a consistent list result. You "
                        "can start a new list without the continue parameter, or use the continue token in this "
                        "response to retrieve the remainder of the results. Continuing with the provided token "
                        "results in an inconsistent list - objects that were created, modified, or deleted "
                        "between the time the first chunk was returned and now may show up in the list.",
                        {"continue": fresh})
            elif match == "Exact" and rv_param:
                at = int(rv_param)
                if at < st.compacted_rv:
                    raise err_expired("The resourceVersion for the provided list is too old.")
            else:
                at = st.rv
            state = st.state_at(res, at) if at < st.rv else {k: v for k, v in st.items(res)}
            keys = sorted(k for k in state if namespace is None or k[0] == namespace)
            items = []
            for k in keys:
                o = state[k]
                key_text = "%s/%s" % k if namespace is None else k[1]
                if start_key is not None and key_text <= start_key.rstrip("\x00"):
                    continue
                if sel.matches(o["metadata"].get("labels")) and fsel.matches(o):
                    items.append((key_text, copy.deepcopy(o)))
            next_token = remaining = None
            if limit and len(items) > limit:
                last_key = items[limit - 1][0]
                next_token = self.continue_token(at, last_key)
                if sel.empty() and fsel.empty():
                    remaining = len(items) - limit
                items = items[:limit]
            return self.list_document(res, [o for _, o in items], str(at), next_token, remaining)

    def continue_token(self, rv, last_key):
        tok = {"v": "meta.k8s.io/v1", "rv": rv, "start": last_key + "\x00"}
        return base64.b64encode(dumps(tok).encode(), altchars=b"-_").decode().rstrip("=")

    def list_document(self, res, items, rv, cont, remaining):
        meta = {"resourceVersion": rv}
        if cont:
            meta["continue"] = cont
        if remaining is not None:
            meta["remainingItemCount"] = remaining
        if not res.crd:
            for o in items:
                o.pop("kind", None)
                o.pop("apiVersion", None)
        return {"kind": res.list_kind, "apiVersion": res.api_version, "metadata": meta, "items": items}

    def wait_for_rv(self, rv_param):
        """resourceVersion=N newer than the server's: wait up to 3 s, then 504 (the watch cache)."""
        if not rv_param or rv_param == "0":
            return
        try:
            want = int(rv_param)
        except ValueError:
            raise err_bad_request('invalid resource version "%s"' % rv_param)
        st = self.state.store
        deadline = time.time() + 3
        with st.cond:
            while st.rv < want:
                left = deadline - time.time()
                if left <= 0:
                    raise ApiError(504, "Timeout", "Too large resource version: %d, current: %d" % (want, st.rv),
                                   {"causes": [{"reason": "ResourceVersionTooLarge",
                                                "message": "Too large resource version"}],
                                    "retryAfterSeconds": 1}, headers=[("Retry-After", "1")])
                st.cond.wait(left)

    # -- watch

    def start_stream(self, resp_headers):
        out = ["HTTP/1.1 200 OK"]
        for k, v in list(resp_headers) + [("Content-Type", "application/json"),
                                          ("Date", self.date_time_string()),
                                          ("Transfer-Encoding", "chunked")]:
            out.append("%s: %s" % (k, v))
        self.wfile.write(("\r\n".join(out) + "\r\n\r\n").encode())

    def write_event(self, ev):
        data = (dumps(ev) + "\n").encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end_stream(self):
        self.wfile.write(b"0\r\n\r\n")

    def client_gone(self):
        try:
            r, _, _ = select.select([self.connection], [], [], 0)
            if r:
                self.connection.setblocking(False)
                try:
                    data = self.connection.recv(1)
                finally:
                    self.connection.settimeout(self.timeout)
                return data == b""
        except ssl.SSLWantReadError:
            return False
        except (OSError, ValueError):
            return True
        return False

    def serve_watch(self, res, namespace, info, query, user, entry, resp_headers):
        st = self.state
        store = st.store
        sel = LabelSelector(first(query, "labelSelector"))
        fsel = FieldSelector(first(query, "fieldSelector"), res)
        if info.name:
            fsel.reqs.append(("metadata.name", True, info.name))
        ns_filter = namespace if (res.namespaced and info.namespace) else None
        rv_param = first(query, "resourceVersion") or ""
        bookmarks = first(query, "allowWatchBookmarks") in ("true", "1")
        send_initial = first(query, "sendInitialEvents") in ("true", "1")
        match = first(query, "resourceVersionMatch")
        if send_initial and (match != "NotOlderThan" or not bookmarks):
            errs = []
            if match != "NotOlderThan":
                errs.append(FieldError("FieldValueForbidden", "resourceVersionMatch",
                                       detail="sendInitialEvents requires setting resourceVersionMatch to "
                                       "NotOlderThan"))
            if not bookmarks:
                errs.append(FieldError("FieldValueForbidden", "allowWatchBookmarks",
                                       detail="sendInitialEvents requires setting allowWatchBookmarks to true"))
            raise err_invalid(None, "", errs, qkind="ListOptions.meta.k8s.io")
        if match and not send_initial:
            raise err_invalid(None, "", [FieldError("FieldValueForbidden", "resourceVersionMatch",
                                                    detail="resourceVersionMatch is forbidden for watch unless "
                                                    "sendInitialEvents is provided")],
                              qkind="ListOptions.meta.k8s.io")
        timeout = first(query, "timeoutSeconds")
        deadline = time.time() + (float(timeout) if timeout else random.uniform(1800, 3600))

        def matches(o):
            meta = o.get("metadata", {})
            if ns_filter is not None and meta.get("namespace", "") != ns_filter:
                return False
            return sel.matches(meta.get("labels")) and fsel.matches(o)

        initial = []
        error_event = None
        with store.lock:
            if rv_param in ("", "0") or send_initial:
                start_rv = store.rv
                if send_initial and rv_param not in ("", "0"):
                    start_rv = max(int(rv_param), store.rv)
                if rv_param in ("", "0") or send_initial:
                    initial = [copy.deepcopy(o) for _, o in store.items(res) if matches(o)]
            else:
                try:
                    start_rv = int(rv_param)
                except ValueError:
                    raise err_bad_request('invalid resource version "%s"' % rv_param)
                if start_rv < store.compacted_rv:
                    error_event = err_expired("too old resource version: %d (%d)"
                                              % (start_rv, store.compacted_rv)).status()
        if error_event is None and rv_param not in ("", "0") and int(rv_param) > store.rv:
            waited = time.time() + 3
            with store.cond:
                while store.rv < int(rv_param) and time.time() < waited:
                    store.cond.wait(waited - time.time())
                if store.rv < int(rv_param):
                    error_event = ApiError(504, "Timeout", "Too large resource version: %s, current: %d"
                                           % (rv_param, store.rv),
                                           {"causes": [{"reason": "ResourceVersionTooLarge",
                                                        "message": "Too large resource version"}],
                                            "retryAfterSeconds": 1}).status()
        with st.lock:
            wid = st.next_watch
            st.next_watch += 1
            handle = WatchHandle(wid, self.connection, info.path, entry["query"], user.name, start_rv
                                 if error_event is None else 0)
            st.watches[wid] = handle
        handle.entry = entry
        entry["watch"] = True
        entry["status"] = 200
        entry["watch_id"] = wid
        st.record(entry)
        log("WATCH %s?%s (%s) from %s" % (info.path, entry["query"], user.name, rv_param or "now"))
        ended = "unknown"
        try:
            self.start_stream(resp_headers)
            if error_event is not None:
                ended = entry["ended"] = "error event"
                self.write_event({"type": "ERROR", "object": error_event})
                self.end_stream()
                return
            for o in initial:
                self.write_event({"type": "ADDED", "object": self.shape(res, o)})
            if send_initial:
                self.write_event({"type": "BOOKMARK", "object": self.bookmark(res, start_rv, True)})
            last = start_rv
            next_bookmark = time.time() + st.bookmark_interval
            while True:
                evs = []
                send_bookmark = False
                with store.cond:
                    while True:
                        if handle.dropped:
                            ended = "dropped"
                            raise AbortStream()
                        if st.epoch != self.epoch:
                            if self.epoch in st.graceful_epoch:
                                ended = "restart (graceful)"
                                raise CleanEnd()
                            ended = "restart"
                            raise AbortStream()
                        if last < store.compacted_rv:
                            ended = "fell behind the history"
                            raise CleanEnd()
                        evs = store.events_after(last)
                        if evs:
                            break
                        now = time.time()
                        if now >= deadline:
                            ended = "timeoutSeconds"
                            raise CleanEnd()
                        if bookmarks and now >= next_bookmark:
                            send_bookmark = True
                            bookmark_rv = store.rv
                            break
                        wake = min(deadline, next_bookmark if bookmarks else deadline, now + 0.5)
                        store.cond.wait(max(0.01, wake - now))
                    if not evs and not send_bookmark:
                        continue
                if self.client_gone():
                    ended = "client closed"
                    raise AbortStream()
                if send_bookmark:
                    self.write_event({"type": "BOOKMARK", "object": self.bookmark(res, bookmark_rv, False)})
                    next_bookmark = time.time() + st.bookmark_interval
                    continue
                for e in evs:
                    last = e.rv
                    handle.last_rv = last
                    if e.res is not res:
                        continue
                    now_m = matches(e.obj) if e.type != "DELETED" else False
                    was_m = matches(e.prev) if e.prev is not None else False
                    if e.type == "DELETED":
                        if was_m:
                            self.write_event({"type": "DELETED", "object": self.shape(res, e.obj)})
                    elif now_m and was_m:
                        self.write_event({"type": "MODIFIED", "object": self.shape(res, e.obj)})
                    elif now_m:
                        self.write_event({"type": "ADDED", "object": self.shape(res, e.obj)})
                    elif was_m:
                        self.write_event({"type": "DELETED", "object": self.shape(res, e.obj)})
        except CleanEnd:
            entry["ended"] = ended
            try:
                self.end_stream()
            except OSError:
                ended += ", client gone"
        except AbortStream:
            entry["ended"] = ended
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        except (OSError, ssl.SSLError, ValueError):
            self.close_connection = True
            ended = "client gone"
        finally:
            with st.lock:
                st.watches.pop(wid, None)
            entry["ended"] = ended
            entry["duration"] = time.time() - entry["time"]
            log("WATCH %s ended: %s" % (info.path, ended))

    def shape(self, res, o):
        o = copy.deepcopy(o)
        o["apiVersion"] = res.api_version
        o["kind"] = res.kind
        return o

    def bookmark(self, res, rv, initial_end):
        meta = {"resourceVersion": str(rv)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {"kind": res.kind, "apiVersion": res.api_version, "metadata": meta}


class CleanEnd(Exception):
    pass


class AbortStream(Exception):
    pass


def fault_error(code, s, res, info):
    reasons = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
               409: "Conflict", 410: "Expired", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
               503: "ServiceUnavailable", 504: "Timeout"}
    reason = s.get("reason") or reasons.get(code, "")
    name = info.name
    if s.get("message"):
        msg = s["message"]
    elif code == 409 and res is not None:
        msg = 'Operation cannot be fulfilled on %s "%s": %s' % (res.qualified, name, CONFLICT_TEXT)
    elif code == 500:
        msg = "Internal error occurred: injected fault"
    elif code == 404 and res is not None:
        msg = '%s "%s" not found' % (res.qualified, name)
    elif code == 410:
        msg = "too old resource version: 1 (2)"
    else:
        msg = "injected fault: %d" % code
    details = details_for(res, name) if res is not None else {}
    headers = []
    if s.get("retry_after") is not None:
        details["retryAfterSeconds"] = int(s["retry_after"])
        headers.append(("Retry-After", str(int(s["retry_after"]))))
    return ApiError(code, reason, msg, details, headers=headers)


def prefix_from_user_agent(ua):
    """The apiserver's default field manager: the User-Agent up to its first '/'."""
    m = ua.split("/")[0]
    return "".join(c for c in m if c.isprintable())[:128]


def group_doc(group):
    versions = [{"groupVersion": "%s/%s" % (group, v), "version": v} for v in GROUP_VERSIONS[group]]
    return {"name": group, "versions": versions, "preferredVersion": versions[0]}


def resource_list(group, version):
    gv = "%s/%s" % (group, version) if group else version
    out = []
    for r in RESOURCES:
        if r.group != group or r.version != version:
            continue
        entry = {"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind,
                 "verbs": r.verbs}
        if r.short:
            entry["shortNames"] = r.short
        out.append(entry)
        if r.status:
            out.append({"name": r.plural + "/status", "singularName": "", "namespaced": r.namespaced,
                        "kind": r.kind, "verbs": ["get", "patch", "update"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}


# ---------------------------------------------------------------------------------------------
# The control port


class ControlHandler(BaseHTTPRequestHandler):
    """Plain HTTP on loopback, JSON in and out, no authentication. Routes:

    GET    /healthz                       ok
    GET    /state                         phase, resourceVersion, compacted rv, open watches, ...
    GET    /objects?resource=R[&namespace=NS][&name=N]   raw stored objects (one, or {"items":[...]})
    PUT    /objects                       body: a whole object; created or replaced as admin, status
                                          included, namespace created if missing; no validation
    PATCH  /objects?resource=R&namespace=NS&name=N   body: a merge patch (Content-Type
                                          application/merge-patch+json, the default) or a JSON patch
                                          (application/json-patch+json); status included
    DELETE /objects?resource=R&namespace=NS&name=N   delete (finalizers honoured)
    GET    /log?FILTERS                   the request log: {"items": [...], "next": SEQ}; filters:
                                          method, path, path_prefix, path_contains, verb, resource,
                                          subresource, namespace, name, user, status, since (seq), watch
    DELETE /log                           forget the log
    GET    /watches                       open watch streams
    POST   /restart                       body: {"down_seconds", "forbidden_seconds",
                                          "unavailable_seconds", "initializing_seconds",
                                          "unavailable_scope": "all"|"crd",
                                          "initializing_scope": "all"|"watch", "graceful": bool}
    POST   /drop-watches                  end every watch stream abruptly: {"dropped": N}
    POST   /compact                       body: {} or {"rv": N}: forget history up to N (default: now)
    POST   /faults                        body: {"method", "path" | "path_prefix" | "path_regex", "verb",
                                          "resource", "subresource", "namespace", "name", "count",
                                          "status", "reason", "message", "retry_after",
                                          "delay_seconds", "close", "as_watch_event"}
    GET    /faults, DELETE /faults        list, clear
    POST   /config                        body: {"bookmark_interval": SECONDS}

    `resource` is the plural, optionally qualified: inmemorychannels, leases, configmaps,
    events.events.k8s.io (plain `events` is the core one).
    """

    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def reply(self, code, obj):
        data = dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.handle_control()

    do_PUT = do_PATCH = do_DELETE = do_POST = do_GET

    def handle_control(self):
        st = STATE
        split = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        n = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(n) if n else b""
        try:
            body = json.loads(raw_body) if raw_body.strip() else {}
        except ValueError as e:
            return self.reply(400, {"error": "body is not JSON: %s" % e})
        route = (self.command, split.path.rstrip("/") or "/")
        try:
            if route == ("GET", "/healthz"):
                return self.reply(200, {"ok": True})
            if route == ("GET", "/state"):
                phase, _ = st.phase()
                with st.lock:
                    watches = len(st.watches)
                    conns = len(st.conns)
                return self.reply(200, {"phase": phase, "resourceVersion": str(st.store.rv),
                                        "compacted_rv": str(st.store.compacted_rv),
                                        "history": len(st.store.events), "watches": watches,
                                        "connections": conns, "port": st.port,
                                        "bookmark_interval": st.bookmark_interval})
            if split.path == "/objects":
                return self.objects(q, body)
            if route == ("GET", "/log"):
                return self.reply(200, self.filtered_log(q))
            if route == ("DELETE", "/log"):
                with st.lock:
                    st.log.clear()
                return self.reply(200, {"next": st.log_seq})
            if route == ("GET", "/watches"):
                with st.lock:
                    return self.reply(200, {"items": [h.as_json() for h in st.watches.values()]})
            if route == ("POST", "/restart"):
                return self.reply(200, st.restart(body))
            if route == ("POST", "/drop-watches"):
                return self.reply(200, {"dropped": st.drop_watches()})
            if route == ("POST", "/compact"):
                return self.reply(200, {"compacted_rv": str(st.store.compact(body.get("rv")))})
            if route == ("POST", "/faults"):
                return self.reply(200, st.add_fault(body))
            if route == ("GET", "/faults"):
                with st.lock:
                    return self.reply(200, {"items": [f.as_json() for f in st.faults]})
            if route == ("DELETE", "/faults"):
                with st.lock:
                    st.faults.clear()
                return self.reply(200, {"items": []})
            if route == ("POST", "/config"):
                if "bookmark_interval" in body:
                    st.bookmark_interval = float(body["bookmark_interval"])
                return self.reply(200, {"bookmark_interval": st.bookmark_interval})
            return self.reply(404, {"error": "no route %s %s" % route})
        except ApiError as e:
            return self.reply(e.code, e.status())
        except Exception as e:
            log("control error: %s\n%s" % (e, traceback.format_exc()))
            return self.reply(500, {"error": str(e)})

    def objects(self, q, body):
        st = STATE
        w = st.writer
        manager = q.get("fieldManager", "apiserver-fixture-control")
        if self.command == "PUT":
            res = resource_for_object(body)
            if res is None:
                return self.reply(400, {"error": "unknown apiVersion/kind %s/%s"
                                                 % (body.get("apiVersion"), body.get("kind"))})
            meta = body.setdefault("metadata", {})
            ns = meta.setdefault("namespace", "default") if res.namespaced else ""
            name = meta.get("name")
            if not name:
                return self.reply(400, {"error": "metadata.name is required"})
            with st.store.lock:
                w.ensure_namespace(ns)
                if st.store.get(res, ns, name) is None:
                    obj = w.create(res, ns, body, manager, "Ignore", [], raw=True)
                else:
                    obj = w.update(res, ns, name, None, body, manager, "Ignore", [], raw=True)
            return self.reply(200, obj)
        res = resource_named(q.get("resource", ""))
        if res is None:
            return self.reply(400, {"error": "unknown resource %r" % q.get("resource")})
        ns = q.get("namespace", "") if res.namespaced else ""
        name = q.get("name")
        if self.command == "GET":
            with st.store.lock:
                if name:
                    obj = st.store.get(res, ns, name)
                    return self.reply(200 if obj else 404, obj or {"error": "not found"})
                items = [o for k, o in st.store.items(res, ns if "namespace" in q else None)]
                return self.reply(200, {"items": items, "resourceVersion": str(st.store.rv)})
        if self.command == "PATCH":
            ct = (self.headers.get("Content-Type") or "application/merge-patch+json").split(";")[0]
            if ct not in ("application/merge-patch+json", "application/json-patch+json"):
                ct = "application/merge-patch+json"
            return self.reply(200, w.patch(res, ns, name, None, ct, body, manager, "Ignore", [], raw=True))
        if self.command == "DELETE":
            obj, deleted = w.delete(res, ns, name, {}, manager)
            return self.reply(200, {"deleted": deleted, "object": obj})
        return self.reply(405, {"error": "method"})

    def filtered_log(self, q):
        st = STATE
        with st.lock:
            items = list(st.log)
            nxt = st.log_seq
        out = []
        for e in items:
            if "since" in q and e["seq"] <= int(q["since"]):
                continue
            if "method" in q and e["method"] != q["method"].upper():
                continue
            if "path" in q and e["path"] != q["path"]:
                continue
            if "path_prefix" in q and not e["path"].startswith(q["path_prefix"]):
                continue
            if "path_contains" in q and q["path_contains"] not in e["path"]:
                continue
            if "status" in q and str(e["status"]) != q["status"]:
                continue
            if "watch" in q and e.get("watch", False) != (q["watch"] in ("true", "1")):
                continue
            skip = False
            for f in ("verb", "resource", "subresource", "namespace", "name", "user"):
                if f in q and str(e.get(f) or "") != q[f]:
                    skip = True
            if skip:
                continue
            out.append(e)
        return {"items": out, "next": nxt}


def resource_for_object(obj):
    av = obj.get("apiVersion", "")
    kind = obj.get("kind", "")
    group, _, version = av.rpartition("/")
    for r in RESOURCES:
        if r.group == group and r.version == version and r.kind == kind:
            return r
    return None


# ---------------------------------------------------------------------------------------------


STATE = None


def main():
    global STATE
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--bind", default="127.0.0.1",
                   help="address of the API port (the control port stays on 127.0.0.1); the "
                        "container tests bind a Docker network's gateway so containers reach it")
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--control-port", type=int, default=0)
    p.add_argument("--tokens", help="JSON: token -> {user, role: admin|imc-dispatcher|none|[rules], groups}")
    p.add_argument("--state", help="JSON: a list of objects (or a v1 List) created at start")
    p.add_argument("--system-namespace", default="knative-eventing")
    p.add_argument("--namespaces", default="default,kube-system,kube-public,kube-node-lease",
                   help="namespaces that exist at start (besides the system namespace)")
    p.add_argument("--anonymous-auth", action="store_true",
                   help="requests without a token run as system:anonymous instead of getting 401")
    p.add_argument("--bookmark-interval", type=float, default=3.0)
    p.add_argument("--history", type=int, default=1000, help="watch events kept")
    p.add_argument("--initial-rv", type=int, default=1000)
    args = p.parse_args()

    STATE = Server(args)
    w = STATE.writer
    for ns in [n for n in args.namespaces.split(",") if n] + [args.system_namespace]:
        w.ensure_namespace(ns)
    if args.state:
        with open(args.state) as f:
            objs = json.load(f)
        if isinstance(objs, dict):
            objs = objs.get("items", [objs])
        for o in objs:
            res = resource_for_object(o)
            if res is None:
                raise SystemExit("--state: unknown apiVersion/kind %s/%s" % (o.get("apiVersion"), o.get("kind")))
            meta = o.setdefault("metadata", {})
            ns = meta.setdefault("namespace", "default") if res.namespaced else ""
            w.ensure_namespace(ns)
            w.create(res, ns, o, "apiserver-fixture-state", "Ignore", [], raw=True)
    STATE.listen()
    control = ThreadingHTTPServer(("127.0.0.1", args.control_port), ControlHandler)
    control.daemon_threads = True
    sys.stdout.write("LISTENING %s:%d\n" % (STATE.bind, STATE.port))
    sys.stdout.write("CONTROL 127.0.0.1:%d\n" % control.server_address[1])
    sys.stdout.flush()
    log("apiserver fixture: https://%s:%d, control http://127.0.0.1:%d, rv %d"
        % (STATE.bind, STATE.port, control.server_address[1], STATE.store.rv))
    try:
        control.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
