//! Quirk modes for the proxy ([`Proxy`]): each one makes a real distribution registry behind it
//! answer the way another registry does, per a public report of that behaviour. A test installs
//! one mode ([`Quirk::install`]) and syncs through it; results are checked at the registry
//! itself, never through the proxy.

use super::proxy::{Action, Condition, LocationStyle, Proxy, RateCap, Rule, RuleId};

/// One registry behaviour that differs from distribution's.
#[derive(Clone, Debug)]
pub enum Quirk {
    /// Manifest `HEAD` answered `404` with no body while `GET` of the same reference works:
    /// Sonatype Nexus. Reports: <https://github.com/andrey-pohilko/registry-cli/issues/14>,
    /// <https://github.com/crazy-max/diun/issues/1614>.
    HeadNotFound,
    /// Manifest `HEAD` answered `405 Method Not Allowed` (a registry behind an auth proxy, some
    /// Harbor setups). Reports: <https://github.com/distribution/distribution/issues/1485>,
    /// <https://github.com/crossplane/crossplane/pull/3223>.
    HeadNotAllowed,
    /// No `Docker-Content-Digest` on manifest `HEAD` or `GET`: Artifactory, ECR, Nexus with an
    /// external database. Reports: <https://github.com/distribution/distribution/issues/3792>,
    /// <https://github.com/deitch/docker_registry2/issues/83>,
    /// <https://github.com/containerd/containerd/issues/3238>.
    NoContentDigest,
    /// Upload `PATCH` answered `201 Created` instead of `202 Accepted`: AWS ECR. Reports:
    /// <https://github.com/aws/containers-roadmap/issues/2831>,
    /// <https://github.com/jdx/mise/pull/11376>.
    PatchCreated,
    /// An nginx in front of the registry with `client_max_body_size` (413 with an HTML page for
    /// a larger body), plus ECR's rule that every upload part but the last is at least
    /// `min_part` bytes (S3 multipart underneath). Reports:
    /// <https://github.com/openresty/lua-resty-upload/issues/27> (nginx's 413 page),
    /// <https://github.com/rubber/rubber/pull/121> (S3's 5 MiB part floor).
    BodyLimit { max_body: u64, min_part: u64 },
    /// Cross-repository mount refused with `202 Accepted` and an upload session (Harbor across
    /// projects, ECR, registries without mount support), as the spec allows. Reports:
    /// <https://github.com/goharbor/harbor/issues/18541>,
    /// <https://github.com/goharbor/harbor/pull/22863>,
    /// <https://github.com/opencontainers/distribution-spec/pull/204>.
    MountRefused,
    /// Upload `Location` as a relative path (`/v2/<name>/blobs/uploads/<id>?_state=...`), which
    /// the spec allows and conformance tests read as such ("relative location"). Spec
    /// discussion: <https://github.com/opencontainers/distribution-spec/pull/296>.
    LocationRelative,
    /// Upload `Location` on another `host:port` (a separate upload endpoint or storage
    /// frontend). Spec discussion: <https://github.com/opencontainers/distribution-spec/pull/296>
    /// ("the location header may point to an external service").
    LocationOtherHost(String),
    /// An OCI 1.1 registry with the referrers API (zot, Harbor 2.8+, ACR, ghcr.io for OCI
    /// artifacts): `GET /v2/<name>/referrers/<subject>` answers `200` with an OCI index of the
    /// manifests whose `subject` is that digest, each listed with its `artifactType`. The test
    /// seeds those manifests by digest and names them here; distribution 2.8 behind the proxy
    /// answers every other subject with 404 (no API). Spec: "Listing Referrers",
    /// <https://github.com/opencontainers/distribution-spec/blob/main/spec.md#listing-referrers>.
    Referrers {
        subject: String,
        referrers: Vec<Listed>,
    },
    /// The closing `PUT ?digest=` of an upload refused when it carries a body (`500`, "not
    /// supported"), while POST, `PATCH`, empty `PUT` (the Docker client's flow) works: registries
    /// only ever tested with `docker push`. Reports: Pulp's registry before monolithic upload
    /// support, <https://github.com/pulp/pulp_container/issues/1219> (fixed by
    /// <https://github.com/pulp/pulp_container/pull/1274>, whose handler said "We do not support
    /// monolithic upload"); JFrog Artifactory requiring `PATCH`,
    /// <https://github.com/containerd/containerd/issues/3533>,
    /// <https://github.com/moby/buildkit/issues/1130>.
    PutBodyRefused,
    /// An upload `PATCH` refused when it carries `Content-Range` (no chunked uploads), while one
    /// streamed `PATCH` without it works. Reports: Google Artifact Registry,
    /// <https://github.com/containers/skopeo/issues/1101>; registries without chunked upload
    /// support, <https://github.com/regclient/regclient/issues/75>; the spec's 416 for a
    /// `Content-Range` the registry cannot take,
    /// <https://github.com/distribution/distribution/issues/3496>.
    ContentRangeRefused,
    /// A manifest `PUT` by digest refused (only tags are accepted as references), so an index's
    /// children cannot be stored. Reports: Harbor before 2.0 blocking manifest lists,
    /// <https://github.com/goharbor/harbor/issues/8855>; Pulp treating a digest reference as a
    /// tag, <https://github.com/pulp/pulp_container/issues/852>; Artifactory storing children
    /// under the tag, <https://github.com/estesp/manifest-tool/issues/98>.
    ManifestByDigestRefused,
    /// Repository names of exactly two path components: the upload `POST` for a deeper name
    /// (`mirror/library/nginx`) answered `404 NAME_UNKNOWN`. Reports: Trow,
    /// <https://github.com/Trow-Registry/trow/issues/86>; jozu.ml,
    /// <https://github.com/kitops-ml/kitops/issues/393>; Docker Hub's `namespace/name`.
    TwoComponentNames,
    /// Tag immutability (ECR `IMMUTABLE` repositories, Harbor immutability rules, Docker Hub):
    /// a manifest `PUT` to this existing `repo:tag` refused with ECR's `400 TAG_INVALID`
    /// message. Reports: <https://github.com/moby/buildkit/issues/3776> (ECR's message),
    /// <https://github.com/docker/buildx/issues/663>,
    /// <https://github.com/goharbor/community/pull/108> (Harbor's rules).
    ImmutableTag { repo: String, tag: String },
    /// The referrers API answering in pages: each page an OCI index, all but the last with
    /// `Link: <...?page=N>; rel="next"`, the same mechanism as tag lists. Spec: "Listing
    /// Referrers" (a registry may paginate with a `Link` header),
    /// <https://github.com/opencontainers/distribution-spec/blob/main/spec.md#listing-referrers>;
    /// the pagination design, <https://github.com/oras-project/artifacts-spec/issues/4>,
    /// <https://github.com/oras-project/artifacts-spec/pull/16>.
    ReferrersPaged {
        repo: String,
        subject: String,
        pages: Vec<Vec<Listed>>,
    },
    /// A cap on requests per second over every endpoint, answered `429 TOOMANYREQUESTS` above
    /// it, with or without `Retry-After`: ECR's per-action TPS quotas ("toomanyrequests: Rate
    /// exceeded" on push), GHCR's limiter on upload POSTs, Quay's and Docker Hub's
    /// infrastructure limits (a bare "Too Many Requests (HAP429)"). Reports:
    /// <https://github.com/awsdocs/amazon-ecr-user-guide/issues/11>,
    /// <https://github.com/chainguard-images/images/issues/173>,
    /// <https://github.com/goharbor/harbor/issues/19199>,
    /// <https://github.com/docker/hub-feedback/issues/1907>.
    RateLimited {
        per_second: f64,
        burst: u32,
        retry_after: bool,
    },
}

/// An OCI index listing `referrers` (a referrers API answer).
fn referrers_index(referrers: &[Listed]) -> Vec<u8> {
    let manifests: Vec<serde_json::Value> = referrers
        .iter()
        .map(|r| {
            serde_json::json!({
                "mediaType": r.media_type,
                "digest": r.digest,
                "size": r.size,
                "artifactType": r.artifact_type,
            })
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    serde_json::to_vec(&index).expect("index json")
}

/// One manifest listed by [`Quirk::Referrers`].
#[derive(Clone, Debug)]
pub struct Listed {
    pub media_type: String,
    pub digest: String,
    pub size: usize,
    pub artifact_type: String,
}

impl Quirk {
    /// Adds the mode's rules to `proxy`.
    pub fn install(&self, proxy: &Proxy) -> Vec<RuleId> {
        let rules = match self {
            Quirk::HeadNotFound => vec![Rule::new(
                "HEAD /v2/*/manifests/*",
                Action::respond(404, &[], ""),
            )],
            Quirk::HeadNotAllowed => vec![Rule::new(
                "HEAD /v2/*/manifests/*",
                Action::respond(
                    405,
                    &[("Content-Type", "application/json")],
                    r#"{"errors":[{"code":"UNSUPPORTED","message":"The operation is unsupported."}]}"#,
                ),
            )],
            Quirk::NoContentDigest => vec![Rule::new(
                "* /v2/*/manifests/*",
                Action::Headers {
                    set: Vec::new(),
                    remove: vec!["docker-content-digest".into()],
                },
            )],
            Quirk::PatchCreated => vec![Rule::new(
                "PATCH /v2/*/blobs/uploads/*",
                Action::ForwardAs(201),
            )],
            Quirk::BodyLimit { max_body, min_part } => vec![Rule::new(
                "* /v2/*/blobs/uploads/*",
                Action::UploadLimits {
                    max_body: *max_body,
                    min_part: *min_part,
                },
            )],
            Quirk::MountRefused => vec![Rule::new(
                "POST /v2/*/blobs/uploads/?*mount=*",
                Action::StripQuery,
            )],
            Quirk::LocationRelative => vec![Rule::new(
                "* /v2/*/blobs/uploads/*",
                Action::RewriteLocation(LocationStyle::Relative),
            )],
            Quirk::LocationOtherHost(host) => vec![Rule::new(
                "* /v2/*/blobs/uploads/*",
                Action::RewriteLocation(LocationStyle::Host(host.clone())),
            )],
            Quirk::Referrers { subject, referrers } => vec![Rule::new(
                &format!("GET /v2/*/referrers/{subject}"),
                Action::respond(
                    200,
                    &[("Content-Type", "application/vnd.oci.image.index.v1+json")],
                    referrers_index(referrers),
                ),
            )],
            Quirk::ReferrersPaged {
                repo,
                subject,
                pages,
            } => {
                let path = format!("/v2/{repo}/referrers/{subject}");
                // Later pages first: the first page's pattern matches any query.
                let mut rules: Vec<Rule> = (1..pages.len())
                    .rev()
                    .map(|i| {
                        let pattern = format!("GET {path}?page={}", i + 1);
                        (i, pattern)
                    })
                    .map(|(i, pattern)| Rule::new(&pattern, page(&path, pages, i)))
                    .collect();
                rules.push(Rule::new(&format!("GET {path}"), page(&path, pages, 0)));
                rules
            }
            Quirk::PutBodyRefused => vec![Rule::new(
                "PUT /v2/*/blobs/uploads/*",
                Action::When(
                    Condition::HasBody,
                    Box::new(Action::respond(
                        500,
                        &[("Content-Type", "application/json")],
                        r#"{"errors":[{"code":"UNKNOWN","message":"not supported"}]}"#,
                    )),
                ),
            )],
            Quirk::ContentRangeRefused => vec![Rule::new(
                "PATCH /v2/*/blobs/uploads/*",
                Action::When(
                    Condition::HasHeader("content-range".into()),
                    Box::new(Action::respond(
                        416,
                        &[("Content-Type", "application/json")],
                        r#"{"errors":[{"code":"BLOB_UPLOAD_INVALID","message":"chunked uploads are not supported"}]}"#,
                    )),
                ),
            )],
            Quirk::ManifestByDigestRefused => vec![Rule::new(
                "PUT /v2/*/manifests/sha256:*",
                Action::respond(
                    400,
                    &[("Content-Type", "application/json")],
                    r#"{"errors":[{"code":"TAG_INVALID","message":"manifest tag did not match URI"}]}"#,
                ),
            )],
            Quirk::TwoComponentNames => vec![Rule::new(
                "* /v2/*/*/*/blobs/uploads/*",
                Action::respond(
                    404,
                    &[("Content-Type", "application/json")],
                    r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#,
                ),
            )],
            Quirk::ImmutableTag { repo, tag } => vec![Rule::new(
                &format!("PUT /v2/{repo}/manifests/{tag}"),
                Action::respond(
                    400,
                    &[("Content-Type", "application/json")],
                    format!(
                        r#"{{"errors":[{{"code":"TAG_INVALID","message":"The image tag '{tag}' already exists in the '{repo}' repository and cannot be overwritten because the repository is immutable."}}]}}"#
                    ),
                ),
            )],
            Quirk::RateLimited {
                per_second,
                burst,
                retry_after,
            } => {
                let cap = RateCap::new(*per_second, *burst);
                proxy.set_rate_cap(Some(if *retry_after {
                    cap.with_retry_after()
                } else {
                    cap
                }));
                Vec::new()
            }
        };
        rules.into_iter().map(|r| proxy.add(r)).collect()
    }
}

/// Page `i` of a paged referrers answer, with a `Link` to the next one unless it is the last.
fn page(path: &str, pages: &[Vec<Listed>], i: usize) -> Action {
    let link = format!("<{path}?page={}>; rel=\"next\"", i + 2);
    let mut headers = vec![("Content-Type", "application/vnd.oci.image.index.v1+json")];
    if i + 1 < pages.len() {
        headers.push(("Link", link.as_str()));
    }
    Action::respond(200, &headers, referrers_index(&pages[i]))
}

/// A tags list page as a registry that paginates would serve it, with a `Link` to `next` when
/// given (distribution 2.8 never paginates unasked, so tests serve pages from the proxy).
pub fn tags_page(repo: &str, tags: &[String], next: Option<&str>) -> Action {
    let body = serde_json::json!({ "name": repo, "tags": tags }).to_string();
    let link = next.map(|n| format!("<{n}>; rel=\"next\""));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(link) = &link {
        headers.push(("Link", link.as_str()));
    }
    Action::respond(200, &headers, body)
}
