//! The `/v2/members` API's request bodies (a member add or update), decoded and validated
//! exactly as etcd does it, errors included: clients see etcd's statuses and messages.

/// etcd's unmarshalRequest + MemberCreateRequest.UnmarshalJSON + types.NewURLs: the peer
/// URLs of a member add or update, or the (status, message) etcd answers with.
pub fn parse_member_request(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Vec<String>, (u16, String)> {
    let ct = content_type.unwrap_or("");
    let ct = match ct.find(';') {
        Some(i) => ct[..i].trim().to_ascii_lowercase(),
        None => ct.to_string(),
    };
    if ct != "application/json" {
        return Err((
            415,
            format!("Bad Content-Type {ct}, accept application/json"),
        ));
    }
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| (400, go_json_error(&e)))?;
    let urls: Vec<String> = match v.get("peerURLs") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|u| u.as_str().map(String::from))
            .collect::<Option<Vec<_>>>()
            .ok_or((
                400,
                "json: cannot unmarshal number into Go struct field .peerURLs of type string"
                    .to_string(),
            ))?,
        Some(_) => {
            return Err((
                400,
                "json: cannot unmarshal value into Go struct field .peerURLs of type []string"
                    .to_string(),
            ))
        }
    };
    if urls.is_empty() {
        return Err((400, "no valid URLs given".to_string()));
    }
    for u in &urls {
        let (scheme, rest) = u.split_once("://").unwrap_or(("", u));
        if !matches!(scheme, "http" | "https" | "unix" | "unixs") {
            return Err((
                400,
                format!("URL scheme must be http, https, unix, or unixs: {u}"),
            ));
        }
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if !host
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && !p.is_empty())
        {
            return Err((
                400,
                format!("URL address does not have the form \"host:port\": {u}"),
            ));
        }
        if !path.is_empty() {
            return Err((400, format!("URL must not contain a path: {u}")));
        }
    }
    Ok(urls)
}

/// Go's encoding/json error text for the common cases clients hit.
fn go_json_error(e: &serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Eof => "unexpected end of JSON input".to_string(),
        _ => format!("invalid JSON: {e}"),
    }
}
