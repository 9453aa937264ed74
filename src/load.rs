//! Reading a command's inputs: document and signature files (size-limited, errors naming the
//! file and carrying the documented exit kind) and compiling a document for a host (an unknown
//! host is a refused document). Shared by commands, follower and query, below all three.

use std::path::Path;

use crate::compile::{self, CompileError, HostContext, Ruleset};
use crate::document::Document;
use crate::error::{Classify, CmdResult, Failure};
use crate::fsutil::{read_limited, ReadError};

/// The bytes of a document file: too large is a refused document, unreadable a usage error.
pub fn read_document(path: &Path) -> CmdResult<Vec<u8>> {
    read_limited(path, crate::document::limits::MAX_DOCUMENT_BYTES).map_err(|e| match e {
        ReadError::TooLarge { .. } => Failure::refused(e),
        other => Failure::usage(other),
    })
}

/// The bytes of a signature file, classified as [`read_document`] does.
pub fn read_signature(path: &Path) -> CmdResult<Vec<u8>> {
    read_limited(path, crate::document::limits::MAX_SIGNATURE_BYTES).map_err(|e| match e {
        ReadError::TooLarge { .. } => Failure::refused(e),
        other => Failure::usage(other),
    })
}

/// Parse a document file (no signature), naming the file in errors.
pub fn load_document(path: &Path) -> CmdResult<Document> {
    let bytes = read_document(path)?;
    Document::parse(&bytes)
        .refused()
        .map_err(|f| f.context(path.display().to_string()))
}

/// Compile for a host; a document that does not name the host is refused.
pub fn compile_for(doc: &Document, ctx: &HostContext) -> CmdResult<Ruleset> {
    compile::compile(doc, ctx).map_err(|e| match e {
        CompileError::UnknownHost(_) | CompileError::NoGatewayDestination(_) => Failure::refused(e),
    })
}
