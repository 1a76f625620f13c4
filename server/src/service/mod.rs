//! The gRPC service: each handler decodes, makes one core call, encodes.

mod streams;

use fencepost as proto;
use fencepost_core::Core;
use fencepost_core::lease::{AcquireArgs, AppendArgs, AppendOnceArgs, ReadFrom};
use proto::v1;
use proto::v1::fencepost_server::Fencepost;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::convert::{self, status};

/// Entries sent per chunk of a Read stream.
const READ_CHUNK: usize = 512;

/// The `fencepost.v1.Fencepost` service over a [`Core`].
#[derive(Clone)]
pub struct Service {
    core: Core,
    /// Cancelled at shutdown, ending long-lived streams so the server can drain.
    shutdown: CancellationToken,
}

impl Service {
    /// A service over `core`; streams end when `shutdown` is cancelled.
    #[must_use]
    pub fn new(core: Core, shutdown: CancellationToken) -> Self {
        Self { core, shutdown }
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

#[tonic::async_trait]
impl Fencepost for Service {
    async fn acquire(
        &self,
        req: Request<v1::AcquireRequest>,
    ) -> Result<Response<v1::AcquireResponse>, Status> {
        let req = req.into_inner();
        let args = AcquireArgs {
            resource: convert::resource(&req.resource)?,
            owner: convert::owner_from(req.owner)?,
            ttl: convert::opt_millis(req.ttl_ms),
            wait: std::time::Duration::from_millis(req.wait_ms),
            idempotency_key: non_empty(req.idempotency_key),
        };
        let grant = self.core.acquire(args).await.map_err(|e| status(&e))?;
        Ok(Response::new(v1::AcquireResponse {
            lease: Some(convert::lease(&grant.lease)),
            head: Some(convert::head(&grant.head)),
        }))
    }

    async fn renew(
        &self,
        req: Request<v1::RenewRequest>,
    ) -> Result<Response<v1::RenewResponse>, Status> {
        let req = req.into_inner();
        let resource = convert::resource(&req.resource)?;
        let ttl = self
            .core
            .renew(Some(&resource), &req.lease_id)
            .map_err(|e| status(&e))?;
        Ok(Response::new(v1::RenewResponse {
            ttl_remaining_ms: convert::millis(ttl),
        }))
    }

    type KeepAliveStream = streams::KeepAliveStream;

    async fn keep_alive(
        &self,
        req: Request<Streaming<v1::KeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        Ok(Response::new(streams::keepalive(
            self.core.clone(),
            req.into_inner(),
            self.shutdown.clone(),
        )))
    }

    async fn release(
        &self,
        req: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::ReleaseResponse>, Status> {
        let req = req.into_inner();
        let resource = convert::resource(&req.resource)?;
        let outcome = match (req.force, req.lease_id.is_empty()) {
            (true, true) => self.core.force_release(&resource),
            // A named lease only: if it ended meanwhile, whoever holds the resource now stays.
            (true, false) => self
                .core
                .force_release_lease(&resource, &req.lease_id)
                .map_err(|e| status(&e))?,
            (false, false) => self
                .core
                .release(&resource, &req.lease_id)
                .map_err(|e| status(&e))?,
            (false, true) => {
                return Err(convert::invalid(
                    "lease_id",
                    "is required unless force is set",
                ));
            }
        };
        Ok(Response::new(convert::release(&outcome)))
    }

    async fn append(
        &self,
        req: Request<v1::AppendRequest>,
    ) -> Result<Response<v1::AppendResponse>, Status> {
        let req = req.into_inner();
        let args = AppendArgs {
            resource: convert::resource(&req.resource)?,
            lease_id: req.lease_id,
            token: req.token,
            entries: req.entries,
            expected_epoch: req.expected_epoch,
            request_id: non_empty(req.request_id),
            release: req.release,
        };
        let done = self.core.append(args).await.map_err(|e| status(&e))?;
        Ok(Response::new(v1::AppendResponse {
            first_seq: done.first_seq,
            last_seq: done.last_seq,
            head: Some(convert::head(&done.head)),
        }))
    }

    async fn append_once(
        &self,
        req: Request<v1::AppendOnceRequest>,
    ) -> Result<Response<v1::AppendOnceResponse>, Status> {
        let req = req.into_inner();
        let args = AppendOnceArgs {
            resource: convert::resource(&req.resource)?,
            owner: convert::owner_from(req.owner)?,
            wait: std::time::Duration::from_millis(req.wait_ms),
            entries: req.entries,
            expected_epoch: req.expected_epoch,
            request_id: non_empty(req.request_id),
        };
        let (done, token) = self.core.append_once(args).await.map_err(|e| status(&e))?;
        Ok(Response::new(v1::AppendOnceResponse {
            first_seq: done.first_seq,
            last_seq: done.last_seq,
            head: Some(convert::head(&done.head)),
            token,
        }))
    }

    type ReadStream = streams::ReadStream;

    async fn read(
        &self,
        req: Request<v1::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let req = req.into_inner();
        let resource = convert::resource(&req.resource)?;
        let from = match req.from_epoch {
            Some(epoch) => ReadFrom::Epoch(epoch),
            None => ReadFrom::Seq(req.from_seq),
        };
        let limit = if req.limit == 0 { u64::MAX } else { req.limit };
        // The first chunk is read before answering, so a bad resource fails the call itself.
        let first = self
            .core
            .read(
                &resource,
                from,
                READ_CHUNK.min(usize::try_from(limit).unwrap_or(usize::MAX)),
            )
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(streams::read(
            self.core.clone(),
            resource,
            first,
            limit,
            READ_CHUNK,
        )))
    }

    async fn describe(
        &self,
        req: Request<v1::DescribeRequest>,
    ) -> Result<Response<v1::DescribeResponse>, Status> {
        let resource = convert::resource(&req.into_inner().resource)?;
        let d = self
            .core
            .describe(&resource)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(v1::DescribeResponse {
            resource: d.resource.to_string(),
            holder: d.holder.as_ref().map(convert::lease),
            token: d.token,
            waiters: u32::try_from(d.waiters).unwrap_or(u32::MAX),
            head: Some(convert::head(&d.head)),
            exists: d.exists,
            blocked: d.blocked.unwrap_or_default(),
        }))
    }

    async fn adopt(
        &self,
        req: Request<v1::AdoptRequest>,
    ) -> Result<Response<v1::AdoptResponse>, Status> {
        let resource = convert::resource(&req.into_inner().resource)?;
        let (detail, head) = self.core.adopt(&resource).await.map_err(|e| status(&e))?;
        Ok(Response::new(v1::AdoptResponse {
            head: Some(convert::head(&head)),
            detail,
        }))
    }

    async fn list(
        &self,
        req: Request<v1::ListRequest>,
    ) -> Result<Response<v1::ListResponse>, Status> {
        let leases = self.core.list(&req.into_inner().prefix);
        Ok(Response::new(v1::ListResponse {
            leases: leases.iter().map(convert::lease).collect(),
        }))
    }

    type WatchStream = streams::WatchStream;

    async fn watch(
        &self,
        req: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = req.into_inner();
        let filter = match (req.resource.is_empty(), req.prefix) {
            (false, p) if !p.is_empty() => {
                return Err(convert::invalid(
                    "prefix",
                    "set either resource or prefix, not both",
                ));
            }
            (false, _) => streams::Filter::Exact(convert::resource(&req.resource)?),
            (true, p) if p.len() > fencepost_core::resource::MAX_NAME_LEN || p.contains('\0') => {
                return Err(convert::invalid(
                    "prefix",
                    "is longer than 512 bytes or contains NUL",
                ));
            }
            (true, p) => streams::Filter::Prefix(p),
        };
        Ok(Response::new(streams::watch(
            &self.core,
            filter,
            self.shutdown.clone(),
        )))
    }
}
