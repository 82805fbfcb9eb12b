//! The gRPC codec of every drover service: prost's, with small starting
//! buffers for the agents' sessions.
//!
//! tonic gives every call an encoding and a decoding buffer of 8 KiB to
//! start with, kept for the call's life. A leader serving 1,000 agents'
//! sessions held 16 MB in them (heaptrack, 10,000 replicas), though most
//! messages on a session are heartbeats of a few bytes. A session's
//! buffers (the `AgentMessage` and `ControllerMessage` streams) start at
//! [`SESSION_START_BYTES`] and grow to the largest message the session
//! carries; every other call keeps tonic's sizes (its big messages, raft
//! batches and listings, would only grow a small buffer more often).

use std::any::TypeId;
use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Where a session's encoding and decoding buffers start.
pub const SESSION_START_BYTES: usize = 1024;

/// tonic's defaults (not exported by tonic): where other calls' buffers
/// start, and how many encoded bytes a stream collects before handing them
/// to HTTP/2.
const START_BYTES: usize = 8 * 1024;
const YIELD_BYTES: usize = 32 * 1024;

/// prost's codec, a session's buffers starting at [`SESSION_START_BYTES`];
/// the generated services and clients use it (`build.rs`).
#[derive(Debug, Clone, Copy)]
pub struct ProstCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ProstCodec<T, U> {
    fn default() -> Self {
        ProstCodec(PhantomData)
    }
}

/// The buffers for a call that encodes or decodes `M`s.
fn settings<M: 'static>() -> BufferSettings {
    let session = [
        TypeId::of::<crate::pb::AgentMessage>(),
        TypeId::of::<crate::pb::ControllerMessage>(),
    ];
    let start = if session.contains(&TypeId::of::<M>()) {
        SESSION_START_BYTES
    } else {
        START_BYTES
    };
    BufferSettings::new(start, YIELD_BYTES)
}

impl<T, U> Codec for ProstCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings::<T>())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings::<U>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;
    use tonic::codec::{Decoder, Encoder};

    /// BufferSettings shows its sizes only through Debug.
    fn starts_at(settings: BufferSettings, bytes: usize) -> bool {
        format!("{settings:?}").contains(&format!("buffer_size: {bytes},"))
    }

    #[test]
    fn sessions_start_small_and_other_calls_at_tonics_size() {
        // The controller's end of a session, and the agent's.
        let mut controller = ProstCodec::<pb::ControllerMessage, pb::AgentMessage>::default();
        let mut agent = ProstCodec::<pb::AgentMessage, pb::ControllerMessage>::default();
        for settings in [
            controller.encoder().buffer_settings(),
            controller.decoder().buffer_settings(),
            agent.encoder().buffer_settings(),
            agent.decoder().buffer_settings(),
        ] {
            assert!(starts_at(settings, SESSION_START_BYTES), "{settings:?}");
        }
        let mut raft = ProstCodec::<pb::RaftBatch, pb::StepAck>::default();
        for settings in [
            raft.encoder().buffer_settings(),
            raft.decoder().buffer_settings(),
        ] {
            assert!(starts_at(settings, START_BYTES), "{settings:?}");
        }
    }
}
