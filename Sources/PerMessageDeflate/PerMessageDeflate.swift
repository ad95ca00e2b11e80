// The frame-side half of permessage-deflate (RFC 7692 §6-7) for one connection.
import WebSocketCodec

/// One connection's compression state: what was agreed and the zlib streams it needs, made
/// only while they are in use. Confined to the connection's loop.
public final class PerMessageDeflate {
    public let parameters: PerMessageDeflateParameters
    public let configuration: PerMessageDeflateConfiguration
    /// Made when a message needs them and dropped when they need not outlive it: most
    /// connections hold neither between messages.
    private var deflater: Deflater?
    private var inflater: Inflater?

    public init(parameters: PerMessageDeflateParameters, configuration: PerMessageDeflateConfiguration) {
        self.parameters = parameters
        self.configuration = configuration
    }

    /// The window our compressor uses: a message compressed alone with this window or a smaller
    /// one may be sent on this connection.
    public var compressionWindowBits: Int { Deflater.windowBits(parameters.localMaxWindowBits) }

    /// Whether zlib memory is held now (for tests and metrics).
    public var holdsStreams: Bool { deflater?.isAllocated == true || inflater?.isAllocated == true }

    /// The payload to send with RSV1 set, or nil to send `payload` as it is (too small to be
    /// worth compressing, or zlib could not allocate).
    public func compress(_ payload: UnsafeRawBufferPointer) -> [UInt8]? {
        guard payload.count >= configuration.minimumCompressedSize else { return nil }
        let deflater = self.deflater ?? Deflater(windowBits: parameters.localMaxWindowBits,
                                                 memoryLevel: configuration.memoryLevel, level: configuration.compressionLevel)
        let compressed = deflater.compress(payload)
        let keep = !(parameters.localNoContextTakeover || configuration.releaseAfterEachMessage)
        self.deflater = keep ? deflater : nil
        return compressed
    }

    /// A message (RSV1 set on its first frame) as the application sees it.
    public func decompress(_ payload: [UInt8], limit: Int) throws(WebSocketError) -> [UInt8] {
        let inflater = self.inflater ?? Inflater(windowBits: parameters.remoteMaxWindowBits)
        self.inflater = parameters.remoteNoContextTakeover ? nil : inflater
        return try inflater.decompress(payload, limit: limit)
    }

    /// A message compressed elsewhere (a shared snapshot) went out between ours: our
    /// compressor's history no longer matches what the peer has seen, so it starts afresh.
    public func forgetCompressionContext() {
        deflater = nil
    }

    /// The connection is quiet: free what can be rebuilt. Our compressor can always start over;
    /// the inflater only when the peer does not keep its context.
    public func releaseIdleStreams() {
        deflater = nil
        if parameters.remoteNoContextTakeover { inflater = nil }
    }
}
