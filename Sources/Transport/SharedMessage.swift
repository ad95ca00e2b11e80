import PerMessageDeflate
import WebSocketCodec

/// A text or binary message sent to many WebSockets (a watch snapshot to every watcher). Its
/// server frames are built once, plain and compressed once per window size, and the same bytes
/// go to every connection whose peer takes them.
///
/// A message may be made of pieces that outlive it (a status document's blocks of resources,
/// most of them unchanged since the last snapshot): each piece is compressed on its own, once,
/// and the message's compressed payload is its pieces' joined. That is a valid deflate stream: a
/// sync flush ends each piece on a byte boundary with an empty stored block, and no piece refers
/// back past its own start.
public final class SharedMessage: @unchecked Sendable {
    public let pieces: [MessagePiece]
    public let isText: Bool
    /// Server frames by window size (0: uncompressed); a nil entry: compression failed.
    private let frames = Locked<[Int: [UInt8]?]>([:])

    public init(text: [UInt8]) {
        pieces = [MessagePiece(text)]
        isText = true
    }

    public init(binary: [UInt8]) {
        pieces = [MessagePiece(binary)]
        isText = false
    }

    /// A text message made of `pieces`, in order (empty ones are skipped).
    public init(textPieces: [MessagePiece]) {
        pieces = textPieces.filter { !$0.bytes.isEmpty }
        isText = true
    }

    public var payloadCount: Int { pieces.reduce(0) { $0 + $1.bytes.count } }

    /// The whole payload, uncompressed.
    public var payload: [UInt8] {
        if pieces.count == 1 { return pieces[0].bytes }
        var joined: [UInt8] = []
        joined.reserveCapacity(payloadCount)
        for piece in pieces { joined.append(contentsOf: piece.bytes) }
        return joined
    }

    /// The payload compressed with `windowBits` (tail removed); nil when it is too small to be
    /// worth it or zlib failed.
    func compressed(windowBits: Int, configuration: PerMessageDeflateConfiguration) -> [UInt8]? {
        guard payloadCount >= configuration.minimumCompressedSize else { return nil }
        var joined: [UInt8] = []
        for (index, piece) in pieces.enumerated() {
            guard let part = piece.compressed(windowBits: windowBits, configuration: configuration) else { return nil }
            if index > 0 { joined.append(contentsOf: [0x00, 0x00, 0xFF, 0xFF]) }
            joined.append(contentsOf: part)
        }
        return joined
    }

    /// The unmasked frame a server sends: compressed with `compression`'s window when it is
    /// given and compressing pays, else plain. Built by the first caller, under a lock; any
    /// thread may call it (a renderer does, so that loops only write).
    public func serverFrame(_ compression: Compression?) -> (frame: [UInt8], compressed: Bool) {
        frames.withLock { frames in
            if let compression {
                if let made = frames[compression.windowBits] {
                    if let made { return (made, true) }
                } else {
                    let made = self.compressed(windowBits: compression.windowBits, configuration: compression.configuration)
                        .map { frame([$0], rsv1: true) }
                    frames[compression.windowBits] = .some(made)
                    if let made { return (made, true) }
                }
            }
            if let plain = frames[0], let plain { return (plain, false) }
            let plain = frame(pieces.map(\.bytes), rsv1: false)
            frames[0] = .some(plain)
            return (plain, false)
        }
    }

    /// Header and payload parts in one buffer: the payload is copied once, not joined first.
    private func frame(_ parts: [[UInt8]], rsv1: Bool) -> [UInt8] {
        let length = parts.reduce(0) { $0 + $1.count }
        var frame: [UInt8] = []
        frame.reserveCapacity(length + WebSocketEncoder.maximumHeaderLength)
        WebSocketEncoder.appendHeader(opcode: isText ? .text : .binary, length: length, rsv1: rsv1, into: &frame)
        for part in parts { frame.append(contentsOf: part) }
        return frame
    }

    /// How a connection compresses shared messages: its window and its zlib settings.
    public struct Compression: Sendable, Equatable {
        public var windowBits: Int
        public var configuration: PerMessageDeflateConfiguration

        public init(windowBits: Int, configuration: PerMessageDeflateConfiguration) {
            self.windowBits = windowBits
            self.configuration = configuration
        }
    }
}

/// Part of a shared message's payload, compressed alone at most once per window size.
public final class MessagePiece: @unchecked Sendable {
    public let bytes: [UInt8]
    private let variants = Locked<[Int: [UInt8]?]>([:])

    public init(_ bytes: [UInt8]) {
        self.bytes = bytes
    }

    /// Compressed with a sync flush, the `00 00 ff ff` tail removed; nil when zlib failed.
    func compressed(windowBits: Int, configuration: PerMessageDeflateConfiguration) -> [UInt8]? {
        variants.withLock { variants in
            if let made = variants[windowBits] { return made }
            let deflater = Deflater(windowBits: windowBits, memoryLevel: 8, level: configuration.compressionLevel)
            let made = bytes.withUnsafeBytes { deflater.compress($0) }
            variants[windowBits] = .some(made)
            return made
        }
    }
}
