//! The OpenAPI 3.1 document of the daemon, built from the same route table
//! as the router ([`super::api::ROUTES`]), so every route is documented and
//! nothing documented is missing.

use serde_json::{Map, Value, json};

use super::api::ROUTES;

/// The path parameters of a route path (`{ws}`, `{id}`, ...).
fn parameters(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| {
            json!({
                "name": name,
                "in": "path",
                "required": true,
                "schema": { "type": "string" }
            })
        })
        .collect()
}

/// The document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for (method, path, permission, tag, summary) in ROUTES {
        let public = *permission == super::api::Permission::Public;
        let mut responses = Map::new();
        responses.insert(
            "2XX".into(),
            json!({ "description": "Success", "content": { "application/json": {} } }),
        );
        for (code, what) in [
            ("400", "Malformed or invalid request"),
            ("404", "Not found, or in another workspace"),
            ("413", "Body too large"),
            ("429", "Rate limited (see Retry-After)"),
        ] {
            responses.insert(
                code.into(),
                json!({ "description": what, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }),
            );
        }
        if !public || *path == "/hooks/{id}" {
            responses.insert(
                "401".into(),
                json!({ "description": "Missing, invalid, expired or revoked credentials", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }),
            );
        }
        if matches!(permission, super::api::Permission::Needs(..)) {
            responses.insert(
                "403".into(),
                json!({ "description": "The credential lacks the permission", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }),
            );
        }
        let mut op = json!({
            "summary": summary,
            "tags": [tag],
            "operationId": format!("{method}{}", path.replace(['/', '{', '}', '.'], "_")),
            // The permission the route table declares and the router checks.
            "x-wrun-permission": permission.describe(),
            "parameters": parameters(path),
            "responses": responses,
        });
        if !public {
            op["security"] = json!([{ "bearer": [] }]);
        } else {
            op["security"] = json!([]);
        }
        if matches!(*method, "post" | "put") {
            let content = if path.ends_with("/recipes/{name}") {
                json!({ "application/gzip": { "schema": { "type": "string", "format": "binary" } } })
            } else {
                json!({ "application/json": { "schema": { "type": "object" } } })
            };
            op["requestBody"] = json!({ "required": false, "content": content });
        }
        let entry = paths
            .entry((*path).to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(obj) = entry.as_object_mut() {
            obj.insert((*method).to_string(), op);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "wrun daemon API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Recipes, connections (write-only values), environments, jobs with masked history, tokens, members and roles, and the audit log. Every error is {\"error\":{\"code\",\"message\"}}."
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "description": "An API token (wrun_pat_...) or a JWT of the configured issuer" }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": { "type": "string" },
                                "message": { "type": "string" }
                            }
                        }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::api::Permission;
    use super::*;

    #[test]
    fn every_workspace_route_needs_a_permission_and_the_document_shows_it() {
        let public: Vec<&str> = ROUTES
            .iter()
            .filter(|r| r.2 == Permission::Public)
            .map(|r| r.1)
            .collect();
        assert_eq!(
            public,
            [
                "/healthz",
                "/readyz",
                "/metrics",
                "/openapi.json",
                "/hooks/{id}",
                // The provider's redirect: a single-use `state` authorises
                // it, and unknown ones count as failures of the address.
                "/oauth/callback"
            ]
        );
        for (method, path, permission, _, _) in ROUTES {
            if path.starts_with("/v1/workspaces/{ws}") {
                assert!(
                    matches!(permission, Permission::Needs(..)),
                    "{method} {path} is not bound to a permission"
                );
                // Reads need read, changes need write.
                let Permission::Needs(_, access) = permission else {
                    unreachable!()
                };
                let changes = *method != "get";
                assert_eq!(
                    *access == wrun_store::access::Access::Write,
                    changes,
                    "{method} {path} declares {access}"
                );
            }
        }
        let doc = document();
        for (method, path, permission, _, _) in ROUTES {
            assert_eq!(
                doc["paths"][*path][*method]["x-wrun-permission"],
                permission.describe(),
                "{method} {path}"
            );
        }
        assert_eq!(
            doc["paths"]["/v1/workspaces/{ws}/connections/{name}"]["put"]["x-wrun-permission"],
            "connections:write"
        );
    }
}
