/// WebSocket close codes used by leasehold (PROTOCOL.md, "Close codes").
public enum CloseCode {
    public static let released: UInt16 = 1000
    public static let goingAway: UInt16 = 1001
    public static let protocolError: UInt16 = 1002
    public static let invalidUTF8: UInt16 = 1007
    public static let policy: UInt16 = 1008
    public static let tooLarge: UInt16 = 1009
    /// The server restarts and keeps the lease: resume it (PROTOCOL.md "Surviving restarts").
    public static let serviceRestart: UInt16 = 1012
    public static let revoked: UInt16 = 4001
    /// The lease was resumed on another connection.
    public static let resumedElsewhere: UInt16 = 4002
    public static let resumeRefused: UInt16 = 4410
    public static let badRequest: UInt16 = 4400
    public static let unsatisfiable: UInt16 = 4404
    public static let waitTimeout: UInt16 = 4408
}
