//! A pod's volumes as folders in the pod's folder, written the way the kubelet writes them:
//! Secret, ConfigMap, downward API and projected volumes (including the service-account token,
//! `ca.crt` and `namespace` the admission plugin projects) go into a timestamped folder
//! `..<time>`, a `..data` symlink to it is swapped atomically (rename over it), and each key is a
//! symlink `key -> ..data/key`; `defaultMode` and item modes are honoured. emptyDir is a plain
//! folder (`sizeLimit` ignored). [`PodVolumes::sync`] rewrites a volume only when its content
//! changed, so Secret and ConfigMap updates reach running containers atomically.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, KeyToPath, Pod, Secret, ServiceAccount, Volume};
use kube::Api;
use kube::api::PostParams;

/// A volume's files: relative path → (content, mode).
pub type Payload = BTreeMap<String, (Vec<u8>, u32)>;

/// How often a projected service-account token is requested anew.
const TOKEN_REFRESH: Duration = Duration::from_secs(30 * 60);

/// The volumes of one pod.
pub struct PodVolumes {
    dir: PathBuf,
    written: BTreeMap<String, Payload>,
    token: Option<(String, Instant)>,
}

impl PodVolumes {
    /// Volumes under `<pod folder>/volumes`.
    pub fn new(pod_dir: &Path) -> Self {
        Self {
            dir: pod_dir.join("volumes"),
            written: BTreeMap::new(),
            token: None,
        }
    }

    /// The host folder of volume `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Creates or updates every volume of the pod; fails (naming the volume) while a source it
    /// needs is missing.
    pub async fn sync(&mut self, client: &kube::Client, pod: &Pod) -> Result<(), String> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let dir = self.path(&volume.name);
            let payload = match self.payload(client, namespace, pod, volume).await {
                Ok(Some(payload)) => payload,
                Ok(None) => {
                    std::fs::create_dir_all(&dir)
                        .map_err(|err| format!("create {}: {err}", dir.display()))?;
                    continue;
                }
                Err(why) => return Err(format!("volume {}: {why}", volume.name)),
            };
            if self.written.get(&volume.name) == Some(&payload) {
                continue;
            }
            write_atomic(&dir, &payload)
                .map_err(|err| format!("volume {}: write {}: {err}", volume.name, dir.display()))?;
            tracing::info!(volume = %volume.name, files = payload.len(), "volume written");
            self.written.insert(volume.name.clone(), payload);
        }
        Ok(())
    }

    /// The files of `volume`; `None` for a plain folder (emptyDir and kinds without files).
    async fn payload(
        &mut self,
        client: &kube::Client,
        namespace: &str,
        pod: &Pod,
        volume: &Volume,
    ) -> Result<Option<Payload>, String> {
        if let Some(secret) = &volume.secret {
            let name = secret.secret_name.clone().unwrap_or_default();
            let mode = mode(secret.default_mode);
            let data = secret_data(client, namespace, &name, secret.optional).await?;
            return Ok(Some(project(&data, secret.items.as_deref(), mode)?));
        }
        if let Some(config_map) = &volume.config_map {
            let mode = mode(config_map.default_mode);
            let data =
                config_map_data(client, namespace, &config_map.name, config_map.optional).await?;
            return Ok(Some(project(&data, config_map.items.as_deref(), mode)?));
        }
        if let Some(downward) = &volume.downward_api {
            let mode = mode(downward.default_mode);
            let mut payload = Payload::new();
            for item in downward.items.iter().flatten() {
                let value = field(pod, item.field_ref.as_ref().map(|f| f.field_path.as_str()))?;
                payload.insert(
                    item.path.clone(),
                    (value.into_bytes(), item.mode.map_or(mode, mode_of)),
                );
            }
            return Ok(Some(payload));
        }
        if let Some(projected) = &volume.projected {
            let mode = mode(projected.default_mode);
            let mut payload = Payload::new();
            for source in projected.sources.iter().flatten() {
                if let Some(secret) = &source.secret {
                    let data =
                        secret_data(client, namespace, &secret.name, secret.optional).await?;
                    payload.extend(project(&data, secret.items.as_deref(), mode)?);
                }
                if let Some(config_map) = &source.config_map {
                    let data =
                        config_map_data(client, namespace, &config_map.name, config_map.optional)
                            .await?;
                    payload.extend(project(&data, config_map.items.as_deref(), mode)?);
                }
                if let Some(downward) = &source.downward_api {
                    for item in downward.items.iter().flatten() {
                        let value =
                            field(pod, item.field_ref.as_ref().map(|f| f.field_path.as_str()))?;
                        payload.insert(
                            item.path.clone(),
                            (value.into_bytes(), item.mode.map_or(mode, mode_of)),
                        );
                    }
                }
                if let Some(token) = &source.service_account_token {
                    let value = self
                        .token(
                            client,
                            namespace,
                            pod,
                            token.audience.clone(),
                            token.expiration_seconds,
                        )
                        .await?;
                    payload.insert(token.path.clone(), (value.into_bytes(), mode));
                }
            }
            return Ok(Some(payload));
        }
        Ok(None)
    }

    /// A token of the pod's service account bound to the pod, requested again after
    /// [`TOKEN_REFRESH`].
    async fn token(
        &mut self,
        client: &kube::Client,
        namespace: &str,
        pod: &Pod,
        audience: Option<String>,
        expiration: Option<i64>,
    ) -> Result<String, String> {
        if let Some((token, at)) = &self.token
            && at.elapsed() < TOKEN_REFRESH
        {
            return Ok(token.clone());
        }
        let account = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(audience.into_iter().collect()),
                expiration_seconds: Some(expiration.unwrap_or(3607)),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                }),
            }),
            ..TokenRequest::default()
        };
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
        let answer = accounts
            .create_token_request(&account, &PostParams::default(), &request)
            .await
            .map_err(|err| format!("token for service account {namespace}/{account}: {err}"))?;
        let token = answer
            .status
            .and_then(|status| status.token)
            .ok_or_else(|| format!("token for {namespace}/{account}: empty answer"))?;
        self.token = Some((token.clone(), Instant::now()));
        Ok(token)
    }
}

fn mode(default_mode: Option<i32>) -> u32 {
    default_mode.map_or(0o644, mode_of)
}

fn mode_of(mode: i32) -> u32 {
    u32::try_from(mode).unwrap_or(0o644) & 0o777
}

async fn secret_data(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    optional: Option<bool>,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match secrets.get_opt(name).await {
        Ok(Some(secret)) => Ok(secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .chain(
                secret
                    .string_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes())),
            )
            .collect()),
        Ok(None) if optional == Some(true) => Ok(BTreeMap::new()),
        Ok(None) => Err(format!("secret {namespace}/{name} not found")),
        Err(err) => Err(format!("secret {namespace}/{name}: {err}")),
    }
}

async fn config_map_data(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    optional: Option<bool>,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    match config_maps.get_opt(name).await {
        Ok(Some(config_map)) => Ok(config_map
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .chain(
                config_map
                    .binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            )
            .collect()),
        Ok(None) if optional == Some(true) => Ok(BTreeMap::new()),
        Ok(None) => Err(format!("configMap {namespace}/{name} not found")),
        Err(err) => Err(format!("configMap {namespace}/{name}: {err}")),
    }
}

/// The files of a Secret or ConfigMap: every key, or only `items` (key → path, mode).
pub fn project(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    mode: u32,
) -> Result<Payload, String> {
    let Some(items) = items else {
        return Ok(data
            .iter()
            .map(|(key, value)| (key.clone(), (value.clone(), mode)))
            .collect());
    };
    let mut payload = Payload::new();
    for item in items {
        let value = data
            .get(&item.key)
            .ok_or_else(|| format!("no key {}", item.key))?;
        payload.insert(
            item.path.clone(),
            (value.clone(), item.mode.map_or(mode, mode_of)),
        );
    }
    Ok(payload)
}

/// A downward API field as a volume file.
fn field(pod: &Pod, path: Option<&str>) -> Result<String, String> {
    let meta = &pod.metadata;
    let map = |m: &Option<BTreeMap<String, String>>| {
        m.iter()
            .flatten()
            .map(|(k, v)| format!("{k}=\"{v}\"\n"))
            .collect::<String>()
    };
    match path {
        Some("metadata.namespace") => Ok(meta.namespace.clone().unwrap_or_default()),
        Some("metadata.name") => Ok(meta.name.clone().unwrap_or_default()),
        Some("metadata.uid") => Ok(meta.uid.clone().unwrap_or_default()),
        Some("metadata.labels") => Ok(map(&meta.labels)),
        Some("metadata.annotations") => Ok(map(&meta.annotations)),
        other => Err(format!("unsupported downward API field {other:?}")),
    }
}

/// Writes `payload` into `dir` as the kubelet's atomic writer does: the files go into a new
/// `..<timestamp>` folder, `..data` is repointed to it with one rename, top-level names are
/// symlinks through `..data`, and the previous folder and names no longer present are removed.
pub fn write_atomic(dir: &Path, payload: &Payload) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let now = time::OffsetDateTime::now_utc();
    let stamp = format!(
        "..{}_{:02}_{:02}_{:02}_{:02}_{:02}.{:09}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.nanosecond()
    );
    let fresh = dir.join(&stamp);
    std::fs::create_dir(&fresh)?;
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o755))?;
    for (path, (content, mode)) in payload {
        let file = fresh.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, content)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(*mode))?;
    }
    let data = dir.join("..data");
    let previous = std::fs::read_link(&data).ok();
    let staged = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&staged);
    std::os::unix::fs::symlink(&stamp, &staged)?;
    std::fs::rename(&staged, &data)?;
    let wanted: std::collections::BTreeSet<String> = payload
        .keys()
        .filter_map(|path| path.split('/').next().map(str::to_string))
        .collect();
    for name in &wanted {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &link)?;
        }
    }
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !wanted.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Some(previous) = previous
        && previous != Path::new(&stamp)
    {
        let _ = std::fs::remove_dir_all(dir.join(previous));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(items: &[(&str, &str, u32)]) -> Payload {
        items
            .iter()
            .map(|(k, v, m)| (k.to_string(), (v.as_bytes().to_vec(), *m)))
            .collect()
    }

    #[test]
    fn atomic_writer_swaps_data_and_keeps_keys_as_symlinks() {
        let temp = tempfile::tempdir().expect("tempdir");
        let dir = temp.path().join("tls");
        write_atomic(
            &dir,
            &payload(&[("tls.crt", "one", 0o444), ("old", "x", 0o600)]),
        )
        .expect("first");
        let first = std::fs::read_link(dir.join("..data")).expect("..data");
        assert_eq!(
            std::fs::read_link(dir.join("tls.crt")).expect("link"),
            Path::new("..data/tls.crt")
        );
        let mode = std::fs::metadata(dir.join("tls.crt"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o444);

        write_atomic(&dir, &payload(&[("tls.crt", "two", 0o444)])).expect("second");
        assert_eq!(
            std::fs::read_to_string(dir.join("tls.crt")).expect("read"),
            "two"
        );
        assert!(!dir.join("old").exists(), "a removed key disappears");
        assert!(!dir.join(&first).exists(), "the previous folder is removed");
    }

    #[test]
    fn items_pick_keys_paths_and_modes() {
        let data: BTreeMap<String, Vec<u8>> = [
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), b"2".to_vec()),
        ]
        .into();
        let items = [KeyToPath {
            key: "b".into(),
            path: "sub/b.txt".into(),
            mode: Some(0o400),
        }];
        let files = project(&data, Some(&items), 0o644).expect("project");
        assert_eq!(files, payload(&[("sub/b.txt", "2", 0o400)]));
        assert!(
            project(
                &data,
                Some(&[KeyToPath {
                    key: "c".into(),
                    ..KeyToPath::default()
                }]),
                0o644
            )
            .is_err()
        );
    }
}
