"""Client for Lemmy's HTTP API: version detection, login, and the moderation calls fsq makes.

Facts used (docs: ../shared/reference/pictrs-lemmy.md, "Lemmy API for follow-up actions"; error
bodies and status codes from Lemmy's ``crates/utils/src/error.rs``):

* Auth: ``Authorization: Bearer <jwt>``. Login: 0.19 ``POST /api/v3/user/login``, 1.0
  ``POST /api/v4/account/auth/login``, body ``{username_or_email, password}`` -> ``{jwt}``.
* Version: ``GET /api/v3/site`` and ``GET /api/v4/site`` answer ``{"version": ...}``. 1.0 still
  serves ``/api/v3/site`` (a compatibility layer) but has no remove, ban or purge routes there,
  so a 1.x server is always moderated through ``/api/v4``.
* Routes and fields (see ``build_call``): 0.19 ``/post/remove``, ``/comment/remove``,
  ``/user/ban {remove_data, expires}``, ``/community/ban_user``, ``/admin/purge/{post,comment,
  person}``; 1.0 the same remove/purge paths with a required ``reason``, ``/admin/ban
  {remove_or_restore_data, reason, expires_at}``, ``/community/ban_user`` with the same renames.
  ``expires``/``expires_at`` are Unix seconds.
* Errors: JSON ``{"error": "<snake_case>", "message"?: ...}``; 401 for ``incorrect_login``,
  404 for ``not_found``, 400 otherwise. Lemmy's session middleware silently ignores a wrong or
  expired JWT, so a protected call then answers 400 ``not_logged_in``; 0.19's ``GET /site``
  shows the logged-in user as ``my_user``, which lets fsq test a JWT before it seals anything.

Secrets (the JWT, the password) are held as ``fsq.secrets.Secret`` and leave this module only
in the Authorization header / login body on the wire. Everything printable (``Call.to_dict``,
error messages) goes through ``LemmyApi.scrub`` -- the one masking point of this package.
Lemmy's answers are untrusted: only small, typed pieces (ids, flags, error codes) are kept, and
error text is stripped of control characters and cut.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from fsq.config import mask_url
from fsq.errors import ConfigError, ExternalError, UsageError
from fsq.secrets import Secret

MAX_ANSWER = 2_000_000
AUTH_ERRORS = {"not_logged_in", "incorrect_login", "not_an_admin", "not_a_mod_or_admin",
               "missing_totp_token", "incorrect_totp_token", "email_not_verified",
               "deleted", "site_ban"}

# action -> (target kind, id field)
ACTIONS: dict[str, tuple[str, str]] = {
    "remove-post": ("post", "post_id"),
    "remove-comment": ("comment", "comment_id"),
    "ban": ("person", "person_id"),
    "community-ban": ("person", "person_id"),
    "purge-post": ("post", "post_id"),
    "purge-comment": ("comment", "comment_id"),
    "purge-person": ("person", "person_id"),
}


class LemmyAuthError(ConfigError):
    """Lemmy refused the credentials (exit 2: fix FSQ_LEMMY_JWT / the login)."""


class LemmyCallError(ExternalError):
    """A Lemmy call failed (exit 3); ``status`` and ``code`` as Lemmy answered."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None
                 ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Call:
    """One request exactly as it goes on the wire, minus the Authorization header's value."""

    method: str
    path: str
    body: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path, "body": self.body,
                "headers": {"Authorization": "Bearer ***"}}

    def line(self) -> str:
        body = json.dumps(self.body, sort_keys=True, ensure_ascii=False) if self.body else ""
        return f"{self.method} {self.path} {body}".rstrip() + "  (Authorization: Bearer ***)"


@dataclass
class Answer:
    status: int
    data: dict[str, Any] = field(default_factory=dict)


def api_for_version(version: str) -> str:
    """'v3' for Lemmy 0.19, 'v4' for 1.x; UsageError for anything else (pure, table-tested)."""
    m = re.match(r"^\s*v?(\d+)\.(\d+)", version or "")
    if not m:
        raise ExternalError(f"Lemmy reported version {clean(version)!r}, which fsq cannot read")
    major, minor = int(m.group(1)), int(m.group(2))
    if major >= 1:
        return "v4"
    if major == 0 and minor == 19:
        return "v3"
    raise UsageError(f"Lemmy {clean(version)} is not supported by `fsq lemmy` (0.19 and 1.x "
                     "are); act in Lemmy's own admin interface, after sealing the evidence "
                     "with `fsq scan`")


def build_call(api: str, action: str, target_id: int, *, reason: str,
               remove_data: bool = False, community_id: int | None = None,
               expires: int | None = None) -> Call:
    """The exact request for ``action`` on API ``api`` ('v3' = 0.19, 'v4' = 1.0)."""
    if action not in ACTIONS:
        raise UsageError(f"unknown Lemmy action {action!r}")
    if api not in ("v3", "v4"):
        raise UsageError(f"unknown Lemmy API {api!r}")
    if not reason or not reason.strip():
        raise UsageError("--reason is required (Lemmy 1.0 requires it, and the modlog and the "
                         "audit log should say why)")
    v4 = api == "v4"
    base = f"/api/{api}"
    _, id_field = ACTIONS[action]
    if action in ("remove-post", "remove-comment"):
        kind = action.split("-", 1)[1]
        return Call("POST", f"{base}/{kind}/remove",
                    {id_field: target_id, "removed": True, "reason": reason})
    if action.startswith("purge-"):
        kind = action.split("-", 1)[1]
        return Call("POST", f"{base}/admin/purge/{kind}", {id_field: target_id, "reason": reason})
    body: dict[str, Any] = {"person_id": target_id, "ban": True,
                            ("remove_or_restore_data" if v4 else "remove_data"): remove_data,
                            "reason": reason}
    if expires is not None:
        body["expires_at" if v4 else "expires"] = int(expires)
    if action == "community-ban":
        if community_id is None:
            raise UsageError("a community ban needs the community id")
        return Call("POST", f"{base}/community/ban_user", {"community_id": community_id, **body})
    return Call("POST", f"{base}/admin/ban" if v4 else f"{base}/user/ban", body)


def answer_ids(data: dict[str, Any]) -> dict[str, Any]:
    """The Lemmy object ids and flags of an answer (PostResponse, CommentResponse,
    BanPersonResponse, BanFromCommunityResponse, SuccessResponse); nothing else is kept."""
    out: dict[str, Any] = {}
    for view, obj in (("post_view", "post"), ("comment_view", "comment"),
                      ("person_view", "person")):
        v = data.get(view)
        o = v.get(obj) if isinstance(v, dict) else None
        if isinstance(o, dict):
            if isinstance(o.get("id"), int):
                out[f"{obj}_id"] = o["id"]
            if isinstance(o.get("removed"), bool):
                out["removed"] = o["removed"]
    for k in ("banned", "success"):
        if isinstance(data.get(k), bool):
            out[k] = data[k]
    return out


_CTRL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def clean(value: Any, limit: int = 300) -> str:
    """Untrusted server text made safe for one terminal line: no control/bidi chars, cut."""
    s = _CTRL.sub("?", str(value))
    return s if len(s) <= limit else s[:limit] + "..."


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # Never follow redirects: the Authorization header would go wherever they point.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        return None


class LemmyApi:
    """``api = LemmyApi(url, jwt=Secret(...)); api.detect(); api.authenticate(); api.send(call)``"""

    def __init__(self, base_url: str, *, jwt: Secret | None = None,
                 username: str | None = None, password: Secret | None = None,
                 timeout: float = 30.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"FSQ_LEMMY_URL {mask_url(base_url)!r} must start with http:// "
                              "or https://")
        self.base_url = base_url.rstrip("/")
        self._jwt = jwt
        self._username = username
        self._password = password
        self.timeout = timeout
        self.version: str | None = None
        self.api: str | None = None
        self._opener = urllib.request.build_opener(_NoRedirect)

    @classmethod
    def from_settings(cls, settings: Any) -> "LemmyApi":
        url = getattr(settings, "lemmy_url", None)
        if not url:
            raise ConfigError("FSQ_LEMMY_URL is not set: fsq needs the Lemmy base URL (e.g. "
                              "https://lemmy.example) to act through Lemmy's API")
        jwt, user, pw = settings.lemmy_jwt, settings.lemmy_username, settings.lemmy_password
        if jwt and (user or pw):
            raise ConfigError("ambiguous Lemmy credentials: set FSQ_LEMMY_JWT or "
                              "FSQ_LEMMY_USERNAME + FSQ_LEMMY_PASSWORD, not both")
        if bool(user) != bool(pw):
            raise ConfigError("FSQ_LEMMY_USERNAME and FSQ_LEMMY_PASSWORD go together; set both "
                              "(or FSQ_LEMMY_JWT instead)")
        return cls(url, jwt=Secret(jwt) if jwt else None, username=user,
                   password=Secret(pw) if pw else None, timeout=settings.lemmy_timeout)

    def __repr__(self) -> str:
        return f"LemmyApi({mask_url(self.base_url)!r}, version={self.version!r})"

    @property
    def where(self) -> str:
        return f"Lemmy at {mask_url(self.base_url)}"

    @property
    def has_credentials(self) -> bool:
        return self._jwt is not None or self._password is not None

    # -- the one masking point ----------------------------------------------------------------

    def scrub(self, text: str) -> str:
        """``text`` with every secret this client holds replaced by ***."""
        for s in (self._jwt, self._password):
            if s is not None:
                v = s.reveal()
                v = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
                if v:
                    text = text.replace(v, "***")
        return text

    # -- transport ----------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                 auth: bool = True) -> Answer:
        headers = {"Accept": "application/json", "User-Agent": "fsq"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if auth and self._jwt is not None:
            v = self._jwt.reveal()
            headers["Authorization"] = "Bearer " + (v.decode() if isinstance(v, bytes) else v)
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers=headers)
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                status, raw = resp.status, resp.read(MAX_ANSWER)
        except urllib.error.HTTPError as exc:
            status = exc.code
            raw = exc.read(MAX_ANSWER) if exc.fp else b""
            if 300 <= status < 400:
                raise LemmyCallError(
                    f"{self.where} answered {method} {path} with a redirect (HTTP {status}) to "
                    f"{clean(exc.headers.get('Location', '?'), 200)}; set FSQ_LEMMY_URL to the "
                    "address that answers directly (fsq never follows redirects with a "
                    "token)", status) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = clean(self.scrub(str(getattr(exc, "reason", exc))))
            raise LemmyCallError(f"{self.where} is unreachable ({reason}); check FSQ_LEMMY_URL "
                                 "and that Lemmy is running") from None
        try:
            parsed = json.loads(raw.decode("utf-8", errors="replace")) if raw else {}
        except ValueError:
            parsed = {"_text": raw[:300].decode("utf-8", errors="replace")}
        return Answer(status, parsed if isinstance(parsed, dict) else {})

    def _fail(self, what: str, ans: Answer) -> LemmyCallError | LemmyAuthError:
        code = ans.data.get("error")
        code = clean(code, 80) if isinstance(code, str) else None
        msg = ans.data.get("message", ans.data.get("_text"))
        detail = code or "no error code"
        if msg:
            detail += f": {clean(self.scrub(str(msg)))}"
        if code in AUTH_ERRORS or ans.status in (401, 403):
            hint = {"not_an_admin": "the account is not an admin of this instance",
                    "not_a_mod_or_admin": "the account is not an admin of this instance",
                    "missing_totp_token": "the account uses 2FA: give FSQ_LEMMY_JWT instead",
                    }.get(code or "", "FSQ_LEMMY_JWT is wrong or expired, or the login "
                                      "(FSQ_LEMMY_USERNAME/FSQ_LEMMY_PASSWORD) is wrong")
            return LemmyAuthError(f"{self.where} refused {what} (HTTP {ans.status}, {detail}): "
                                  f"{hint}")
        return LemmyCallError(f"{self.where} answered {what} with HTTP {ans.status} ({detail})",
                              ans.status, code)

    # -- steps ----------------------------------------------------------------------------------

    def detect(self) -> str:
        """Ask ``GET /api/v3/site`` (then ``/api/v4/site``) for the version; returns the API."""
        ans = self._request("GET", "/api/v3/site", auth=False)
        version = ans.data.get("version") if ans.status == 200 else None
        if not isinstance(version, str):
            ans4 = self._request("GET", "/api/v4/site", auth=False)
            version = ans4.data.get("version") if ans4.status == 200 else None
            if not isinstance(version, str):
                raise LemmyCallError(f"{self.where}: neither GET /api/v3/site (HTTP "
                                     f"{ans.status}) nor GET /api/v4/site (HTTP {ans4.status}) "
                                     "gave a Lemmy version; is FSQ_LEMMY_URL the Lemmy "
                                     "backend?", ans4.status)
        api = api_for_version(version)
        if api == "v4":  # confirm the v4 API exists (1.0's v3 layer cannot moderate)
            ans4 = self._request("GET", "/api/v4/site", auth=False)
            if ans4.status != 200:
                raise LemmyCallError(f"{self.where} reports version {clean(version, 40)} but "
                                     f"GET /api/v4/site answered HTTP {ans4.status}", ans4.status)
        self.version, self.api = clean(version, 40), api
        return api

    def authenticate(self) -> None:
        """Log in (username/password) or test the JWT where Lemmy allows it (0.19's
        ``my_user``). Raises LemmyAuthError (exit 2) when Lemmy refuses."""
        if self.api is None:
            self.detect()
        if self._jwt is None and self._password is None:
            raise ConfigError("no Lemmy credentials: set FSQ_LEMMY_JWT (an admin's token) or "
                              "FSQ_LEMMY_USERNAME and FSQ_LEMMY_PASSWORD")
        if self._jwt is None:
            assert self._password is not None
            path = "/api/v3/user/login" if self.api == "v3" else "/api/v4/account/auth/login"
            pw = self._password.reveal()
            ans = self._request("POST", path, {"username_or_email": self._username,
                                               "password": pw.decode() if isinstance(pw, bytes)
                                               else pw}, auth=False)
            if ans.status != 200:
                raise self._fail("the login", ans)
            jwt = ans.data.get("jwt")
            if not isinstance(jwt, str) or not jwt:
                raise LemmyAuthError(f"{self.where} accepted the login but gave no token (email "
                                     "not verified or registration pending?)")
            self._jwt = Secret(jwt)
            return
        if self.api == "v3":
            ans = self._request("GET", "/api/v3/site")
            if ans.status == 200 and not isinstance(ans.data.get("my_user"), dict):
                raise LemmyAuthError(f"{self.where} does not accept FSQ_LEMMY_JWT (GET "
                                     "/api/v3/site shows no logged-in user): the token is wrong "
                                     "or expired; log in again and set a fresh one")

    def send(self, call: Call) -> Answer:
        """Make ``call``; a non-2xx answer (or ``success: false``) raises."""
        ans = self._request(call.method, call.path, call.body)
        if not 200 <= ans.status < 300:
            raise self._fail(f"{call.method} {call.path}", ans)
        if ans.data.get("success") is False:
            raise LemmyCallError(f"{self.where} answered {call.method} {call.path} with "
                                 "success: false", ans.status)
        return ans
