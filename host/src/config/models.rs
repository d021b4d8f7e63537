//! The `[models.NAME]` section: provider, endpoint, key and limits.

use super::parse::{check_name, Loader};
use super::resolve::{bulkhead, merge_retry, resolve_breaker, resolve_retry};
use super::{schema, ByteSize, ConfigError, ModelConfig};
use serde_spanned::Spanned;
use std::time::Duration;

impl Loader<'_> {
    pub(super) fn model(
        &self,
        name: &Spanned<String>,
        spec: &schema::ModelSpec,
        defaults: &schema::Defaults,
    ) -> Result<ModelConfig, ConfigError> {
        use super::Provider;
        let key = format!("models.{}", name.get_ref());
        check_name(self, name, &key)?;
        let provider = *spec.provider.get_ref();
        let base_url = match &spec.base_url {
            Some(u) => {
                let text = u.get_ref().trim_end_matches('/');
                if !(text.starts_with("http://") || text.starts_with("https://")) {
                    return Err(self.err(
                        u.span().start,
                        format!("{key}.base_url"),
                        format!("`{text}` is not an http(s) URL"),
                    ));
                }
                text.to_owned()
            }
            None => match provider {
                Provider::Anthropic => "https://api.anthropic.com".to_owned(),
                Provider::Openai => "https://api.openai.com/v1".to_owned(),
            },
        };
        if let Some(var) = &spec.api_key_env {
            let v = var.get_ref();
            if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(self.err(
                    var.span().start,
                    format!("{key}.api_key_env"),
                    format!("`{v}` is not an environment variable name"),
                ));
            }
        } else if spec.base_url.is_none() {
            return Err(self.err(
                spec.provider.span().start,
                format!("{key}.api_key_env"),
                "a hosted provider needs `api_key_env` (the variable holding the key); set \
                    `base_url` for a local server without one",
            ));
        }
        let mut retry = defaults.retry.clone();
        if let Some(r) = &spec.retry {
            merge_retry(&mut retry, r);
            resolve_retry(&retry)
                .map_err(|m| self.err(name.span().start, format!("{key}.retry"), m))?;
        }
        Ok(ModelConfig {
            name: name.get_ref().clone(),
            provider,
            model: spec.model.get_ref().clone(),
            api_key_env: spec.api_key_env.as_ref().map(|v| v.get_ref().clone()),
            base_url,
            timeout: spec.timeout.map_or(Duration::from_secs(120), |d| d.0),
            idle_timeout: spec.idle_timeout.map_or(Duration::from_secs(30), |d| d.0),
            max_response: spec.max_response.unwrap_or(ByteSize(16 << 20)),
            max_tokens: spec.max_tokens.unwrap_or(1024),
            stream: spec.stream.unwrap_or(false),
            label: spec.label.clone(),
            breaker: resolve_breaker(&defaults.breaker, spec.breaker.as_ref()),
            bulkhead: bulkhead(spec.max_concurrent, spec.max_queue, defaults),
            retry: spec.retry.clone().unwrap_or_default(),
        })
    }
}
