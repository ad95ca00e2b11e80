// The frame-side half of permessage-deflate (RFC 7692 §6-7) for one connection.
import WebSocketCodec

/// One connection's compression state: what was agreed and the zlib streams it needs, made
/// only while they are in use. Confined to the connection's loop.
public final class PerMessageDeflate {
    public let parameters: PerMessageDeflateParameters
    public let configuration: PerMessageDeflateConfiguration
    private let deflater: Deflater
    private let inflater: Inflater

    public init(parameters: PerMessageDeflateParameters, configuration: PerMessageDeflateConfiguration) {
        self.parameters = parameters
        self.configuration = configuration
        deflater = Deflater(windowBits: parameters.localMaxWindowBits, memoryLevel: configuration.memoryLevel,
                            level: configuration.compressionLevel)
        inflater = Inflater(windowBits: parameters.remoteMaxWindowBits)
    }

    /// The window our compressor uses: a message compressed alone with this window or a smaller
    /// one may be sent on this connection.
    public var compressionWindowBits: Int { deflater.windowBits }

    /// Whether zlib memory is held now (for tests and metrics).
    public var holdsStreams: Bool { deflater.isAllocated || inflater.isAllocated }

    /// The payload to send with RSV1 set, or nil to send `payload` as it is (too small to be
    /// worth compressing, or zlib could not allocate).
    public func compress(_ payload: UnsafeRawBufferPointer) -> [UInt8]? {
        guard payload.count >= configuration.minimumCompressedSize else { return nil }
        let compressed = deflater.compress(payload)
        if parameters.localNoContextTakeover || configuration.releaseAfterEachMessage { deflater.release() }
        return compressed
    }

    /// A message (RSV1 set on its first frame) as the application sees it.
    public func decompress(_ payload: [UInt8], limit: Int) throws(WebSocketError) -> [UInt8] {
        let message = try inflater.decompress(payload, limit: limit)
        if parameters.remoteNoContextTakeover { inflater.release() }
        return message
    }

    /// A message compressed elsewhere (a shared snapshot) went out between ours: our
    /// compressor's history no longer matches what the peer has seen, so it starts afresh.
    public func forgetCompressionContext() {
        deflater.release()
    }

    /// The connection is quiet: free what can be rebuilt. Our compressor can always start over;
    /// the inflater only when the peer does not keep its context.
    public func releaseIdleStreams() {
        deflater.release()
        if parameters.remoteNoContextTakeover { inflater.release() }
    }
}
