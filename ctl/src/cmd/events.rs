//! `droverctl get events [-w] [-A] [--for TYPE/NAME] [-o wide|yaml|json|name]`
//!
//! One `ListEvents` call prints what is stored (oldest first, as kubectl
//! sorts by time). With `-w` the same rows are printed, then `WatchEvents`
//! streams each new event from the last sequence number seen; when the
//! contacted controller goes away, the watch resumes on another one from that
//! number, so nothing is shown twice or skipped.

use anyhow::bail;
use drover_proto::pb;
use tonic::Code;

use super::{get::no_resources, print, Env};
use crate::cli::{GetArgs, OutputFormat};
use crate::client::{is_transport_failure, Client};
use crate::output::template::{CustomColumns, Template};
use crate::output::{self, events, now_ms};
use crate::resource::ResourceKind;
use crate::Interrupted;

/// Column widths a watch starts with when the first batch is empty or narrow.
const WATCH_MIN_WIDTHS: [(&str, usize); 3] = [("TYPE", 7), ("REASON", 16), ("OBJECT", 28)];

pub async fn run(env: &Env, args: &GetArgs, names: &[String]) -> anyhow::Result<()> {
    if !names.is_empty() {
        bail!(
            "events have no names to get; list them all or pick an object with --for (e.g. droverctl get events --for replica/web-1a2b3-0)"
        );
    }
    if args.deployment.is_some() {
        bail!("--deployment only applies to replicas; for a deployment's events use --for deployment/NAME");
    }
    let (kind, name) = match &args.for_object {
        None => (String::new(), String::new()),
        Some(text) => object_selector(text)?,
    };
    let (mut client, settings) = env.client()?;
    let namespace = if args.all_namespaces || kind == "Node" {
        String::new()
    } else {
        settings.namespace.clone()
    };
    let request = pb::ListEventsRequest {
        namespace,
        object_kind: kind,
        object_name: name,
        after_seq: 0,
        limit: 0,
        read: Some(pb::ReadOptions { stale: args.stale }),
    };
    let listed = client
        .call(|mut c| {
            let request = request.clone();
            async move { c.list_events(request).await }
        })
        .await?
        .events;
    let wide = args.output == Some(OutputFormat::Wide);
    let headers = events::headers(wide, args.all_namespaces);
    let now = now_ms();
    let rows: Vec<Vec<String>> = listed
        .iter()
        .map(|e| events::row(e, wide, args.all_namespaces, now))
        .collect();
    let columns = watch_columns(&headers, &rows, args.watch);
    match args.output.clone() {
        None | Some(OutputFormat::Wide) => {
            if rows.is_empty() && !args.watch {
                crate::print_note(&no_resources(&settings.namespace, args.all_namespaces));
                return Ok(());
            }
            let mut text = if args.no_headers {
                String::new()
            } else {
                columns.line(&headers) + "\n"
            };
            for r in &rows {
                text.push_str(&columns.line(r));
                text.push('\n');
            }
            print(&text)?;
        }
        Some(OutputFormat::CustomColumns(spec)) => {
            let objects: Vec<_> = listed.iter().map(events::kubernetes_object).collect();
            let table = CustomColumns::parse(&spec)?.render(&objects);
            print(&if args.no_headers || args.watch && objects.is_empty() {
                output::without_header(&table)
            } else {
                table
            })?;
        }
        Some(format) if args.watch => {
            for e in &listed {
                print(&one_event(e, &format)?)?;
            }
        }
        Some(OutputFormat::Name) => {
            let text: String = listed.iter().map(|e| events::name(e) + "\n").collect();
            print(&text)?;
        }
        Some(format) => {
            let list =
                output::kubernetes_list(listed.iter().map(events::kubernetes_object).collect());
            let text = match format {
                OutputFormat::Yaml => output::to_yaml(&list)?,
                OutputFormat::JsonPath(t) => Template::parse(&t)?.render(&list),
                _ => output::to_json(&list)?,
            };
            print(&text)?;
        }
    }
    if !args.watch {
        return Ok(());
    }
    let after = listed.last().map_or(0, |e| e.seq);
    watch(&mut client, request, after, args, &columns).await
}

/// Follow new events until Ctrl-C, resuming on another controller when the
/// stream breaks.
async fn watch(
    client: &mut Client,
    mut request: pb::ListEventsRequest,
    mut after: u64,
    args: &GetArgs,
    columns: &events::Columns,
) -> anyhow::Result<()> {
    let interrupted = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(interrupted);
    let wide = args.output == Some(OutputFormat::Wide);
    loop {
        request.after_seq = after;
        let open = client.call(|mut c| {
            let request = request.clone();
            async move { c.watch_events(request).await }
        });
        let mut stream = tokio::select! {
            stream = open => stream?,
            () = &mut interrupted => return Err(Interrupted.into()),
        };
        loop {
            let message = tokio::select! {
                message = stream.message() => message,
                () = &mut interrupted => return Err(Interrupted.into()),
            };
            match message {
                Ok(Some(e)) => {
                    after = e.seq;
                    let text = match &args.output {
                        None | Some(OutputFormat::Wide) => {
                            columns.line(&events::row(&e, wide, args.all_namespaces, now_ms()))
                                + "\n"
                        }
                        Some(format) => one_event(&e, format)?,
                    };
                    print(&text)?;
                }
                // The controller ended the stream (shutting down): resume elsewhere.
                Ok(None) => break,
                Err(status)
                    if is_transport_failure(&status) || status.code() == Code::Unavailable =>
                {
                    break
                }
                Err(status) => bail!("{}", crate::client::status_sentence(&status)),
            }
        }
    }
}

/// One event as `-w -o json|yaml|name` prints it: one object at a time.
fn one_event(e: &pb::Event, format: &OutputFormat) -> anyhow::Result<String> {
    let object = events::kubernetes_object(e);
    Ok(match format {
        OutputFormat::Name => events::name(e) + "\n",
        OutputFormat::Yaml => format!("---\n{}", output::to_yaml(&object)?),
        OutputFormat::Json | OutputFormat::Wide => output::to_json(&object)?,
        OutputFormat::JsonPath(t) => Template::parse(t)?.render(&object),
        OutputFormat::CustomColumns(spec) => {
            output::without_header(&CustomColumns::parse(spec)?.render(&[object]))
        }
    })
}

/// Widths from the listed rows; a watch also leaves room for typical values.
fn watch_columns(headers: &[&str], rows: &[Vec<String>], watch: bool) -> events::Columns {
    if !watch {
        return events::Columns::fit(headers, rows);
    }
    let typical: Vec<String> = headers
        .iter()
        .map(|h| {
            let width = WATCH_MIN_WIDTHS
                .iter()
                .find(|(name, _)| name == h)
                .map_or(0, |(_, w)| *w);
            " ".repeat(width)
        })
        .collect();
    let mut all = rows.to_vec();
    all.push(typical);
    events::Columns::fit(headers, &all)
}

/// `--for replica/web-1a2b3-0` → (`Replica`, `web-1a2b3-0`).
fn object_selector(text: &str) -> anyhow::Result<(String, String)> {
    let Some((kind, name)) = text.split_once('/') else {
        bail!(
            "--for takes TYPE/NAME (e.g. --for replica/web-1a2b3-0 or --for node/n1), not {text:?}"
        );
    };
    let kind = match ResourceKind::parse(kind)? {
        ResourceKind::Deployment => "Deployment",
        ResourceKind::Replica => "Replica",
        ResourceKind::Node => "Node",
        ResourceKind::Event => bail!("--for names the object the events are about, not an event"),
        ResourceKind::ConfigMap
        | ResourceKind::Secret
        | ResourceKind::Service
        | ResourceKind::Endpoints => bail!(
            "drover records no events about {}; --for takes a deployment, replica or node",
            ResourceKind::parse(kind)?.plural()
        ),
    };
    if name.is_empty() {
        bail!("--for {text:?} names no object; give TYPE/NAME");
    }
    Ok((kind.to_string(), name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn for_takes_kubectl_type_names() {
        assert_eq!(
            object_selector("po/web-1").unwrap(),
            ("Replica".to_string(), "web-1".to_string())
        );
        assert_eq!(object_selector("no/n1").unwrap().0, "Node");
        assert_eq!(
            object_selector("deployment.apps/web").unwrap().0,
            "Deployment"
        );
        assert!(object_selector("web").is_err());
        assert!(object_selector("node/").is_err());
        assert!(object_selector("services/x").is_err());
    }

    #[test]
    fn a_watch_leaves_room_for_wider_rows() {
        let headers = events::headers(false, false);
        let c = watch_columns(&headers, &[], true);
        let line = c.line(&["1s", "Normal", "Scheduled", "replica/web-1", "m"]);
        assert_eq!(
            line,
            "1s          Normal    Scheduled          replica/web-1                  m"
        );
    }
}
