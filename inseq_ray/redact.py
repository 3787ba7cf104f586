"""What a URL may become once it is stored or printed: no credentials, no signature, no token.

A leaf module (standard library only): storage, shard planning, the runner, the CLI and file loading all
redact through :func:`redact_url` / :func:`redact_text`, so no path can bypass it.

Presigned URLs (S3 SigV4/SigV2, GCS V4/V2, Azure SAS, CloudFront) are bearer credentials until they
expire. Every parameter of their signing schemes is dropped, not only the secret ones: the date, expiry
and credential scope change with each re-issue, so the redacted form of a re-issued URL equals the
first one's, and a file keeps its key (and its records their ``seq_id``s) across fresh signatures.
Other query parameters (``versionId``, ``alt``, ...) are kept: they may name a different object.
"""

from __future__ import annotations

import re

# Parameters that belong to a signing scheme or carry a secret (case-insensitive, whole names).
SIGNING_PARAMS = re.compile(
    r"(?ix)^(?:"
    r"x-amz-[a-z0-9-]+"  # S3 SigV4: Algorithm, Credential, Date, Expires, SignedHeaders, Signature, Security-Token
    r"|x-goog-[a-z0-9-]+"  # GCS V4
    r"|awsaccesskeyid|googleaccessid|expires|signature|policy|key-pair-id"  # SigV2, GCS V2, CloudFront
    r"|sv|ss|srt|sp|se|st|spr|sig|sr|si|sip|sdd|ses|skoid|sktid|skt|ske|sks|skv|saoid|suoid|scid"  # Azure SAS
    r"|token|access_token|id_token|refresh_token|auth|authorization|key|api_key|apikey|api-key|code"
    r"|password|passwd|pwd|secret|client_secret|credential|credentials|session_token|sas"
    r")$"
)
_USERINFO = re.compile(r"(?<=//)[^/@?#\s]*@")
_URL = re.compile(r"""[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'"<>)\]]+""")
# ``name=value`` pairs of signing parameters anywhere in free text (a URL cut apart, a header echoed back).
_PAIR = re.compile(r"""(?P<name>[A-Za-z][A-Za-z0-9_-]*)=(?P<value>[^&\s'"<>)\]]+)""")


def redact_url(url: str) -> str:
    """``url`` without ``user:password@`` and without the parameters of any signing scheme (order kept).

    >>> redact_url("https://h/c.txt?versionId=3&X-Amz-Signature=abc&X-Amz-Date=20260101T000000Z")
    'https://h/c.txt?versionId=3'
    """
    url = _USERINFO.sub("", url)
    base, sep, rest = url.partition("?")
    if not sep:
        return url
    query, hash_sep, fragment = rest.partition("#")
    kept = [p for p in query.split("&") if p and not SIGNING_PARAMS.match(p.split("=", 1)[0])]
    out = base + ("?" + "&".join(kept) if kept else "")
    return out + (hash_sep + fragment if hash_sep else "")


def redact_text(text: str) -> str:
    """Free text (an exception message, a log line) with every URL in it redacted, and any stray
    ``signing-param=value`` pair's value replaced by ``REDACTED``."""
    text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    return _PAIR.sub(
        lambda m: f"{m.group('name')}=REDACTED" if SIGNING_PARAMS.match(m.group("name")) else m.group(0), text
    )
